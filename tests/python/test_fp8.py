"""FP8 dispatch through the epd Python package (cpu backend): a group created with
dispatch_dtype="fp8_e4m3" exposes recv_x as e4m3 bytes and recv_scales, whose contents after a
dispatch are the quantization rule of common/fp8.h (epd.reference.quantize_fp8)."""

import unittest

import numpy as np

import epd
from epd import reference
from epd_daemon import SessionTestCase

N, H, K, T, E = 4, 256, 2, 4, 4


def bf16_tokens(rng):
    """bf16 bits of [N, H] tokens with blocks of very different magnitudes, an all-zero block
    and the non-finite values the rule ignores in amax."""
    values = rng.standard_normal((N, H)).astype(np.float32)
    values[:, 128:] *= np.float32(1e-3)
    values[1, :128] = 0.0
    values[2, 5], values[2, 6], values[3, 7] = np.nan, np.inf, -np.inf
    return reference.from_float(values, epd.BF16)


class Fp8DispatchTest(SessionTestCase):
    RANKS = 1

    def dispatch(self, name, layout, scale_format):
        self.session.create_group(name, world_size=1, experts=E, hidden=H, max_tokens_per_rank=T,
                                  top_k=K, dtype="bf16", layout=layout,
                                  dispatch_dtype="fp8_e4m3", scale_format=scale_format)
        handle = self.session.create_handle(name)
        x = epd.shm_like(bf16_tokens(np.random.default_rng(7)))
        idx = epd.shm_like(np.array([[0, 1], [2, -1], [3, 3], [-1, -1]], np.int32))
        w = epd.shm_like(np.full((N, K), 0.5, np.float32))
        self.session.update(handle, idx, w)
        self.session.dispatch(handle, x)
        cfg = reference.Config(1, E, H, T, K, epd.BF16, expert_major=layout == "expert_major")
        return handle, x, idx, w, reference.dispatch(cfg, [x], [idx], [w], 0)

    def check_views(self, handle, scale_format):
        rows = handle.info.recv_rows
        recv_x, recv_scales = handle.view("recv_x"), handle.view("recv_scales")
        self.assertEqual(recv_x.shape, (rows, H))
        self.assertEqual(recv_x.dtype, np.uint8)
        self.assertEqual(recv_scales.shape, (rows, H // 128))
        self.assertEqual(recv_scales.dtype, np.uint8 if scale_format == "ue8m0" else np.float32)
        return recv_x, recv_scales

    def test_expert_major_fp32_scales(self):
        handle, _, _, _, expected = self.dispatch("fp8-em", "expert_major", "fp32")
        recv_x, recv_scales = self.check_views(handle, "fp32")
        used = int(expected["recv_counts"].sum())
        self.assertGreater(used, 0)
        q, scales = reference.quantize_fp8(expected["recv_x"], "fp32")
        np.testing.assert_array_equal(handle.view("recv_counts"), expected["recv_counts"])
        np.testing.assert_array_equal(recv_x[:used], q)
        np.testing.assert_array_equal(recv_scales[:used].view(np.uint32), scales.view(np.uint32))

    def test_rank_major_ue8m0_scales_and_absent_rows(self):
        handle, _, _, _, expected = self.dispatch("fp8-rm", "rank_major", "ue8m0")
        recv_x, recv_scales = self.check_views(handle, "ue8m0")
        q, scales = reference.quantize_fp8(expected["recv_x"], "ue8m0")
        # Rows without a selection here (token 3, and rows past the tokens) are zero bytes.
        present = (expected["recv_topk_idx"] >= 0).any(axis=1)
        self.assertEqual(int(present.sum()), 3)
        np.testing.assert_array_equal(recv_x, np.where(present[:, None], q, 0))
        np.testing.assert_array_equal(recv_scales, np.where(present[:, None], scales, 0))

    def test_prequantized_dispatch_copies_x_and_x_scales(self):
        # The frontend quantizes (any bytes will do: the daemon copies them unchanged) and
        # passes e4m3 x as uint8 plus x_scales in the group's scale format.
        for layout, scale_format in (("expert_major", "fp32"), ("rank_major", "ue8m0")):
            with self.subTest(layout=layout, scale_format=scale_format):
                name = f"fp8-pre-{layout}-{scale_format}"
                self.session.create_group(name, world_size=1, experts=E, hidden=H,
                                          max_tokens_per_rank=T, top_k=K, dtype="bf16",
                                          layout=layout, dispatch_dtype="fp8_e4m3",
                                          scale_format=scale_format)
                handle = self.session.create_handle(name)
                q, scales = reference.quantize_fp8(bf16_tokens(np.random.default_rng(3)),
                                                   scale_format)
                x, x_scales = epd.shm_like(q), epd.shm_like(scales)
                routing = np.array([[0, 1], [2, -1], [3, 3], [-1, -1]], np.int32)
                self.session.update(handle, epd.shm_like(routing))
                self.session.dispatch(handle, x, x_scales)
                # Expert-major rows: by expert, then token, then k (docs/design.md).
                routed = [t for e in range(E) for t in range(N) for k in range(K)
                          if routing[t, k] == e]
                recv_x, recv_scales = self.check_views(handle, scale_format)
                if layout == "expert_major":
                    used = len(routed)
                    np.testing.assert_array_equal(recv_x[:used], q[routed])
                    np.testing.assert_array_equal(recv_scales[:used].view(np.uint8),
                                                  scales[routed].view(np.uint8))
                else:
                    present = np.array([True, True, True, False])
                    np.testing.assert_array_equal(recv_x[:N], np.where(present[:, None], q, 0))
                    np.testing.assert_array_equal(recv_scales[:N],
                                                  np.where(present[:, None], scales, 0))

    def test_high_throughput_rows_are_packed_with_their_scales(self):
        # One row per token with an expert here, packed by (source rank, token): quantized by
        # the daemon, or the frontend's bytes (any will do) and x_scales copied unchanged.
        routing = np.array([[0, 1], [2, -1], [3, 3], [-1, -1]], np.int32)
        packed = [0, 1, 2]  # token 3 selects nothing
        for scale_format, prequantized in (("ue8m0", False), ("fp32", True)):
            with self.subTest(scale_format=scale_format, prequantized=prequantized):
                name = f"fp8-ht-{scale_format}-{prequantized}"
                self.session.create_group(name, world_size=1, experts=E, hidden=H,
                                          max_tokens_per_rank=T, top_k=K, dtype="bf16",
                                          algorithm="high_throughput",
                                          dispatch_dtype="fp8_e4m3", scale_format=scale_format)
                handle = self.session.create_handle(name)
                tokens = bf16_tokens(np.random.default_rng(5))
                q, scales = reference.quantize_fp8(tokens, scale_format)
                self.session.update(handle, epd.shm_like(routing))
                if prequantized:
                    q = np.random.default_rng(9).integers(0, 256, (N, H), dtype=np.uint8)
                    self.session.dispatch(handle, epd.shm_like(q), epd.shm_like(scales))
                else:
                    self.session.dispatch(handle, epd.shm_like(tokens))
                recv_x, recv_scales = self.check_views(handle, scale_format)
                np.testing.assert_array_equal(handle.view("recv_rank_counts"), [len(packed)])
                np.testing.assert_array_equal(recv_x[:len(packed)], q[packed])
                np.testing.assert_array_equal(recv_scales[:len(packed)].view(np.uint8),
                                              scales[packed].view(np.uint8))

    def test_prequantized_dispatch_errors_name_the_field(self):
        self.session.create_group("fp8-pre-errors", world_size=1, experts=E, hidden=H,
                                  max_tokens_per_rank=T, top_k=K, dtype="bf16",
                                  dispatch_dtype="fp8_e4m3", scale_format="ue8m0")
        handle = self.session.create_handle("fp8-pre-errors")
        self.session.update(handle, epd.shm_like(np.zeros((N, K), np.int32)))
        q = epd.shm_like(np.zeros((N, H), np.uint8))
        with self.assertRaises(epd.InvalidArgumentError) as caught:
            self.session.dispatch(handle, q, epd.shm_like(np.ones((N, H // 128), np.float32)))
        self.assertIn("x_scales.dtype = fp32", caught.exception.message)
        with self.assertRaises(epd.InvalidArgumentError) as caught:
            self.session.dispatch(handle, q, epd.shm_like(np.ones((N, 1), np.uint8)))
        self.assertIn("x_scales.shape[1] = 1", caught.exception.message)

    def test_in_place_combine_is_refused(self):
        handle, _, _, _, _ = self.dispatch("fp8-combine", "expert_major", "fp32")
        out = epd.shm_empty((N, H), "bf16")
        with self.assertRaises(epd.InvalidArgumentError) as caught:
            self.session.combine(handle, out)
        self.assertIn("expert_out", caught.exception.message)

    def test_frontend_launched_path_is_refused(self):
        # The frontend-launched kernels move the token dtype only: FP8 groups stay on the
        # daemon's streams, and forcing the other path says why.
        self.session.create_group("fp8-frontend", world_size=1, experts=E, hidden=H,
                                  max_tokens_per_rank=T, top_k=K, dtype="bf16",
                                  dispatch_dtype="fp8_e4m3")
        with self.assertRaisesRegex(epd.FailedPreconditionError, "dispatches FP8"):
            self.session.create_handle("fp8-frontend", data_path="frontend")
        self.assertEqual(self.session.create_handle("fp8-frontend").data_path, "daemon")

    def test_token_dtype_group_has_no_scales(self):
        self.session.create_group("bf16", world_size=1, experts=E, hidden=H,
                                  max_tokens_per_rank=T, top_k=K, dtype="bf16")
        handle = self.session.create_handle("bf16")
        self.assertIsNone(handle.view("recv_scales"))
        self.assertEqual(handle.view("recv_x").dtype, np.uint16)


class QuantizeRuleTest(unittest.TestCase):
    """The oracle itself on values whose e4m3 bytes are known."""

    def test_encode_e4m3(self):
        values = np.array([0.0, -0.0, 448.0, 500.0, -np.inf, np.nan, 1.0, 2.0**-9, 1.0625,
                           1.1875, 2.0**-10], np.float32)
        want = [0x00, 0x80, 0x7E, 0x7E, 0xFE, 0x7F, 0x38, 0x01, 0x38, 0x3A, 0x00]
        np.testing.assert_array_equal(reference.encode_e4m3(values), np.array(want, np.uint8))

    def test_zero_block_has_scale_one(self):
        q, scales = reference.quantize_fp8(np.zeros((1, 128), np.uint16), "ue8m0")
        self.assertEqual(int(scales[0, 0]), 127)
        self.assertFalse(q.any())


if __name__ == "__main__":
    unittest.main()
