"""epd.Buffer (the DeepEP-shaped layer) on the cpu backend: R ranks as threads of this process,
each with its own session, checked bit for bit against epd.reference."""

import threading
import unittest

import numpy as np

import epd
from epd import reference, tensors
from epd_daemon import Daemon

try:
    import torch
except ImportError:
    torch = None

R, E, H, T, K = 2, 4, 16, 8, 2


def make_inputs(rank, n, dtype, seed):
    rng = np.random.default_rng(seed * 10 + rank)
    x = reference.from_float(rng.standard_normal((n, H)).astype(np.float32), dtype)
    idx = rng.integers(-1, E, size=(n, K)).astype(np.int64)
    idx[0, :] = [0, E - 1]  # every rank reaches both ranks at least once
    w = rng.random((n, K)).astype(np.float32)
    return x, idx, w


def to_torch(array):
    """torch CPU tensor of a numpy array (bf16 from its uint16 bits)."""
    array = np.asarray(array)
    if array.dtype == np.uint16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array)


def expert(recv_x, dtype, scale):
    """A deterministic 'expert': z = x * scale rounded to the token dtype."""
    return reference.from_float(reference.to_float(np.asarray(recv_x), dtype) * np.float32(scale),
                                dtype)


class LayerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(ranks=R)
        cls.client = epd.Client(cls.daemon.address)
        cls.groups = 0

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.daemon.stop()

    def run_layer(self, *, dtype="fp32", layout="expert_major", blocking=None, in_place=False,
                  use_torch=False, expert_tensor=False, iterations=3):
        code = tensors.dtype_code(dtype)
        LayerTest.groups += 1
        group = f"layer{LayerTest.groups}"
        sessions = [self.client.open_session(r, f"rank{r}") for r in range(R)]
        sessions[0].create_group(group, world_size=R, experts=E, hidden=H, max_tokens_per_rank=T,
                                 top_k=K, dtype=dtype, layout=layout)
        buffers = [epd.Buffer(s, s.create_handle(group)) for s in sessions]
        cfg = reference.Config.of(buffers[0].handle)
        barrier = threading.Barrier(R, timeout=30)
        results, errors = {}, []

        def rank(r, it, inputs):
            try:
                buf = buffers[r]
                x, idx, w = inputs[r]
                if in_place:
                    x, idx, w = (epd.shm_like(a) for a in (x, idx, w))
                    for a in (x, idx, w):
                        sessions[r].register(a)
                if use_torch:
                    x, idx, w = (to_torch(a) for a in (x, idx, w))
                recv = buf.dispatch(x, idx, w, blocking=blocking)
                staged = np.asarray(buf._stage_x["array"])[: x.shape[0]]
                # Registered inputs are read in place; others go through the staging buffer.
                if in_place:
                    self.assertFalse(staged.any(), "registered x was staged")
                else:
                    self.assertTrue(staged.any(), "unregistered x was not staged")
                if use_torch:
                    self.assertTrue(torch.is_tensor(recv.recv_x))
                    recv_x = recv.recv_x.view(torch.int16) if code == tensors.BF16 else recv.recv_x
                    recv_x_np = recv_x.numpy().view(reference.storage_dtype(code))
                    counts = recv.recv_counts.numpy()
                else:
                    recv_x_np, counts = recv.recv_x, recv.recv_counts
                snapshot = {"counts": np.array(counts), "recv_x": np.array(recv_x_np)}
                if cfg.expert_major:
                    snapshot["src"] = np.array(recv.recv_src if not use_torch
                                               else recv.recv_src.numpy())
                else:
                    snapshot["topk_idx"] = np.array(recv.recv_topk_idx if not use_torch
                                                    else recv.recv_topk_idx.numpy())
                z = expert(recv_x_np, code, 1.5 + r)
                barrier.wait()
                if expert_tensor:
                    expert_out = epd.shm_like(z) if not use_torch else to_torch(z)
                    out = buf.combine(expert_out, blocking=blocking)
                else:
                    recv_x_np[...] = z  # in place in the handle's recv_x
                    out = buf.combine(blocking=blocking)
                if use_torch:
                    self.assertTrue(torch.is_tensor(out))
                    out = out.view(torch.int16) if code == tensors.BF16 else out
                    out = out.numpy().view(reference.storage_dtype(code))
                snapshot["z"], snapshot["out"] = z, np.array(out)
                results[r] = snapshot
            except Exception as e:  # noqa: BLE001 - reported by the test
                errors.append((r, e))
                barrier.abort()

        try:
            for it in range(iterations):
                n = T - it  # token count changes every iteration
                inputs = [make_inputs(r, n, code, it) for r in range(R)]
                threads = [threading.Thread(target=rank, args=(r, it, inputs)) for r in range(R)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                self.assertFalse(any(t.is_alive() for t in threads), "a rank hung")
                self.assertEqual(errors, [])
                xs, idxs, ws = zip(*inputs)
                for d in range(R):
                    want = reference.dispatch(cfg, xs, idxs, ws, d)
                    got = results[d]
                    np.testing.assert_array_equal(got["counts"], want["recv_counts"])
                    if cfg.expert_major:
                        rows = int(got["counts"].sum())
                        np.testing.assert_array_equal(got["recv_x"][:rows], want["recv_x"])
                        np.testing.assert_array_equal(got["src"][:rows], want["recv_src"])
                    else:
                        np.testing.assert_array_equal(got["recv_x"], want["recv_x"])
                        np.testing.assert_array_equal(got["topk_idx"], want["recv_topk_idx"])
                zs = [results[d]["z"] for d in range(R)]
                for s in range(R):
                    want = reference.combine(cfg, s, idxs, ws, zs)
                    np.testing.assert_array_equal(results[s]["out"], want)
        finally:
            for b in buffers:
                b.close()
            for s in sessions:
                s.close()

    def test_expert_major_fp32_blocking(self):
        self.run_layer()

    def test_expert_major_bf16_fenced(self):
        self.run_layer(dtype="bf16", blocking=False)

    def test_rank_major_fp16(self):
        self.run_layer(dtype="fp16", layout="rank_major")

    def test_registered_inputs_used_in_place(self):
        self.run_layer(in_place=True, blocking=False)

    def test_expert_out_tensor(self):
        self.run_layer(expert_tensor=True)

    @unittest.skipIf(torch is None, "torch is not installed")
    def test_torch_cpu_tensors_bf16(self):
        self.run_layer(dtype="bf16", use_torch=True, blocking=False)

    @unittest.skipIf(torch is None, "torch is not installed")
    def test_torch_cpu_expert_out_in_shm(self):
        self.run_layer(use_torch=True, expert_tensor=True)

    def test_shape_errors_name_the_tensor(self):
        session = self.client.open_session(0)
        try:
            session.create_group("shapes", world_size=1, experts=2, hidden=H,
                                 max_tokens_per_rank=T, top_k=K, dtype="fp32")
            handle = session.create_handle("shapes")
            self.assertEqual(session.registrations(), [])
            buf = epd.Buffer(session, handle)
            self.assertEqual(len(session.registrations()), 4)  # x, idx, weights, out staging
            with self.assertRaises(ValueError) as caught:
                buf.dispatch(np.zeros((T + 1, H), np.float32), np.zeros((T + 1, K), np.int64))
            self.assertIn("max_tokens_per_rank", str(caught.exception))
            with self.assertRaises(ValueError) as caught:
                buf.dispatch(np.zeros((2, H), np.float32), np.zeros((2, K + 1), np.int64))
            self.assertIn("topk_idx", str(caught.exception))
            with self.assertRaises(RuntimeError):
                buf.combine()
            with self.assertRaises(epd.InvalidArgumentError) as caught:
                buf.dispatch(np.zeros((1, H), np.float32), np.array([[0, 5]], np.int64))
            self.assertIn("5", caught.exception.message)
            with self.assertRaises(ValueError) as caught:
                buf.dispatch(np.zeros((1, H), np.float64), np.zeros((1, K), np.int64))
            self.assertIn("dtype", str(caught.exception))
            buf.close()
            self.assertEqual(session.registrations(), [], "close must release the staging")
        finally:
            session.close()


if __name__ == "__main__":
    unittest.main()
