"""epd Python package against a real daemon (cpu backend): every call of Client / Session /
Fence / Handle, errors as exceptions with the daemon's code and message, registration
lifetime."""

import gc
import os
import signal
import subprocess
import sys
import threading
import time
import unittest
import weakref

import numpy as np

import epd
from epd import memory
from epd_daemon import SessionTestCase

GROUP = dict(world_size=1, experts=4, hidden=16, max_tokens_per_rank=8, top_k=2, dtype="fp32")


def wait_until_stopped(pid, timeout_s=5.0):
    """Waits (bounded) until every thread of `pid` is in the stopped state."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as stat:
                    states.append(stat.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                continue  # the thread ended meanwhile
        if all(state in ("T", "t") for state in states):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} not stopped after {timeout_s} s: {states}")
        time.sleep(0.001)


class ClientTest(SessionTestCase):
    def group(self, name, **overrides):
        config = dict(GROUP, **overrides)
        self.session.create_group(name, **config)
        return config

    def test_node_info_and_stats(self):
        info = self.client.node_info()
        self.assertEqual(info.backend, "cpu")
        self.assertEqual(info.ranks, 2)
        self.assertEqual(info.gpus, 0)
        self.assertEqual(info.default_data_path, "daemon")
        self.assertTrue(info.daemon_version)
        stats = self.client.stats()
        self.assertGreaterEqual(stats.sessions_open, 1)
        self.assertGreaterEqual(stats.sessions_total, stats.sessions_open)

    def test_import_needs_no_numpy(self):
        # Frontends with torch but no numpy (and C API users) import the package; only
        # epd.reference and the cpu backend's shm arrays need numpy, on first use.
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(epd.__file__)))
        code = ("import sys; sys.modules['numpy'] = None; import epd; "
                "print(epd.Client.__name__, 'numpy' in sys.modules and sys.modules['numpy'])")
        env = dict(os.environ, PYTHONPATH=package_root)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.split(), ["Client", "None"])

    def test_connect_failure_names_the_missing_socket(self):
        with self.assertRaises(epd.NotFoundError) as caught:
            epd.Client("unix:///nonexistent/epd.sock", connect_timeout_ms=200)
        self.assertIn("no such socket", caught.exception.message)

    def test_session_identity_and_bad_rank(self):
        self.assertEqual(self.session.rank, 0)
        self.assertNotEqual(self.session.id, 0)
        with self.assertRaises(epd.EpdError) as caught:
            self.client.open_session(7)
        self.assertIn("7", caught.exception.message)

    def test_closed_session_fails_precondition(self):
        session = self.client.open_session(1)
        session.close()
        session.close()  # idempotent
        with self.assertRaises(ValueError):
            session.create_fence()

    def test_group_errors_name_field_and_value(self):
        with self.assertRaises(epd.InvalidArgumentError) as caught:
            self.session.create_group("bad", **dict(GROUP, experts=3, world_size=2))
        self.assertEqual(caught.exception.code, 3)
        self.assertIn("3", caught.exception.message)
        with self.assertRaises(ValueError):
            self.session.create_group("bad2", **dict(GROUP, layout="diagonal"))
        # spans_nodes reaches the daemon, which is not part of a multi-node deployment.
        with self.assertRaises(epd.FailedPreconditionError) as caught:
            self.session.create_group("bad3", **dict(GROUP, spans_nodes=True))
        self.assertIn("spans_nodes needs a multi-node deployment", caught.exception.message)

    def test_group_create_destroy_and_capacity(self):
        config = dict(GROUP, world_size=2, experts=4)
        capacity = self.session.create_group("cap", **config)
        self.assertEqual(capacity, 2 * GROUP["max_tokens_per_rank"])
        self.assertEqual(self.session.create_group("cap", **config), capacity)  # same: no-op
        with self.assertRaises(epd.AlreadyExistsError) as caught:
            self.session.create_group("cap", **dict(config, hidden=32))
        self.assertIn("cap", caught.exception.message)
        self.session.destroy_group("cap")
        with self.assertRaises(epd.NotFoundError) as caught:
            self.session.destroy_group("cap")
        self.assertIn("cap", caught.exception.message)

    def test_handles_create_attach_views_destroy(self):
        self.group("h")
        handle = self.session.create_handle("h", "h-persistent", persistent=True)
        self.assertFalse(handle.on_device)
        self.assertTrue(handle.expert_major)
        self.assertEqual(handle.data_path, "daemon")
        L = GROUP["experts"]
        self.assertEqual(handle.view("recv_x").shape, (handle.info.recv_rows, GROUP["hidden"]))
        self.assertEqual(handle.view("recv_counts").shape, (L,))
        self.assertEqual(handle.view("recv_offsets").shape, (L,))
        self.assertEqual(handle.view("recv_src").shape, (handle.info.recv_rows, 3))
        self.assertIsNone(handle.view("recv_topk_idx"))
        # The daemon holds the region and the routing the handle binds.
        self.assertGreater(handle.held_bytes, handle.info.region_bytes)
        attached = self.session.attach_handle("h-persistent")
        self.assertEqual(attached.id, handle.id)
        with self.assertRaises(epd.NotFoundError):
            self.session.attach_handle("no-such-handle")
        # The cpu backend has no frontend-launched path: forcing it says so.
        with self.assertRaisesRegex(epd.FailedPreconditionError, "cuda backend"):
            self.session.create_handle("h", data_path="frontend")
        with self.assertRaises(epd.InvalidArgumentError):
            self.session.create_handle("h", data_path=9)
        handle.destroy()
        attached.close()
        with self.assertRaises(epd.NotFoundError):
            self.session.attach_handle("h-persistent")

    def test_rank_major_views(self):
        self.group("rm", world_size=2, layout="rank_major")
        handle = self.session.create_handle("rm")
        T, K = GROUP["max_tokens_per_rank"], GROUP["top_k"]
        self.assertFalse(handle.expert_major)
        self.assertEqual(handle.view("recv_x").shape, (2 * T, GROUP["hidden"]))
        self.assertEqual(handle.view("recv_topk_idx").shape, (2 * T, K))
        self.assertEqual(handle.view("recv_topk_weights").shape, (2 * T, K))
        self.assertEqual(handle.view("recv_counts").shape, (2,))
        self.assertIsNone(handle.view("recv_src"))
        self.assertIsNone(handle.view("recv_offsets"))

    def test_high_throughput_views(self):
        self.group("ht", world_size=2, algorithm="high_throughput")
        handle = self.session.create_handle("ht")
        T, K, L = GROUP["max_tokens_per_rank"], GROUP["top_k"], GROUP["experts"] // 2
        rows = 2 * T  # recv_capacity defaults to R * T
        self.assertFalse(handle.expert_major)
        self.assertEqual(handle.view("recv_x").shape, (rows, GROUP["hidden"]))
        self.assertEqual(handle.view("recv_src").shape, (rows, 2))
        self.assertEqual(handle.view("recv_topk_idx").shape, (rows, K))
        self.assertEqual(handle.view("recv_counts").shape, (L,))
        self.assertEqual(handle.view("recv_offsets").shape, (L + 1,))
        self.assertEqual(handle.view("recv_rank_counts").shape, (2,))
        self.assertEqual(handle.view("recv_rank_offsets").shape, (2,))
        self.assertEqual(handle.view("expert_rows").shape, (rows * min(K, L),))
        self.assertIsNone(handle.view("recv_weights"))

    def test_high_throughput_bounds_reach_the_daemon(self):
        config = dict(GROUP, world_size=2, algorithm="high_throughput", recv_capacity=5,
                      sm_budget=4)
        self.assertEqual(self.session.create_group("ht-small", **config), 5)
        handle = self.session.create_handle("ht-small")
        self.assertEqual(handle.view("recv_x").shape, (5, GROUP["hidden"]))
        config.update(sm_budget=100000)
        with self.assertRaises(epd.EpdError) as raised:
            self.session.create_group("ht-wide", **config)
        self.assertIn("sm_budget=100000", str(raised.exception))

    def test_host_fences(self):
        fence = self.session.create_fence()
        self.assertFalse(fence.on_device)
        self.assertEqual(fence.load(), 0)
        fence.signal(5)
        self.assertEqual(fence.load(), 5)
        fence.wait(5, timeout_ms=100)
        with self.assertRaises(epd.DeadlineExceededError) as caught:
            fence.wait(6, timeout_ms=20)
        self.assertIn("6", caught.exception.message)
        # Host page: stream ops are refused (UNIMPLEMENTED in a build without CUDA).
        with self.assertRaises((epd.FailedPreconditionError, epd.UnimplementedError)):
            fence.signal_on_stream(1, 0)
        fence.destroy()
        with self.assertRaises(ValueError):
            fence.load()

    def test_ops_blocking_and_fenced_match_reference(self):
        self.group("ops")
        handle = self.session.create_handle("ops")
        rng = np.random.default_rng(1)
        n, H, K = 5, GROUP["hidden"], GROUP["top_k"]
        x = epd.shm_like(rng.standard_normal((n, H)).astype(np.float32))
        idx = epd.shm_like(np.array([[0, 1], [2, -1], [3, 3], [1, 0], [-1, -1]], np.int32))
        w = epd.shm_like(rng.random((n, K)).astype(np.float32))
        out = epd.shm_empty((n, H), "fp32")
        self.session.update(handle, idx, w)
        self.session.dispatch(handle, x)
        cfg = epd.reference.Config.of(handle)
        expected = epd.reference.dispatch(cfg, [x], [idx], [w], 0)
        counts = handle.view("recv_counts")
        np.testing.assert_array_equal(counts, expected["recv_counts"])
        rows = int(counts.sum())
        np.testing.assert_array_equal(handle.view("recv_x")[:rows], expected["recv_x"])
        np.testing.assert_array_equal(handle.view("recv_src")[:rows], expected["recv_src"])
        self.session.combine(handle, out)
        want = epd.reference.combine(cfg, 0, [idx], [w], [handle.view("recv_x")])
        np.testing.assert_array_equal(out, want)

        # Fenced: posted, then released by the host fence; the daemon signals completion.
        fence_in, fence_out = self.session.create_fence(), self.session.create_fence()
        out[...] = 0
        self.session.combine(handle, out, wait=(fence_in, 1), signal=(fence_out, 1))
        fence_in.signal(1)
        fence_out.wait(1, timeout_ms=5000)
        self.session.sync()
        np.testing.assert_array_equal(out, want)

    def test_expert_out_tensor_and_int64_routing(self):
        self.group("eo")
        handle = self.session.create_handle("eo")
        n, H = 3, GROUP["hidden"]
        x = epd.shm_like(np.arange(n * H, dtype=np.float32).reshape(n, H))
        idx = epd.shm_like(np.array([[0, 2], [1, 2], [3, 0]], np.int64))
        self.session.update(handle, idx)
        self.session.dispatch(handle, x)
        expert_out = epd.shm_like(np.asarray(handle.view("recv_x")) * 2)
        out = epd.shm_empty((n, H), "fp32")
        self.session.combine(handle, out, expert_out)
        cfg = epd.reference.Config.of(handle)
        want = epd.reference.combine(cfg, 0, [idx], [None], [expert_out])
        np.testing.assert_array_equal(out, want)

    def test_request_errors_carry_code_and_message(self):
        self.group("err")
        handle = self.session.create_handle("err")
        idx = epd.shm_like(np.array([[0, 9]], np.int32))
        with self.assertRaises(epd.InvalidArgumentError) as caught:
            self.session.update(handle, idx)
        self.assertIn("9", caught.exception.message)
        self.assertIn("topk_idx", caught.exception.message)
        # x before any routing, wrong width
        x = epd.shm_empty((1, 3), "fp32")
        with self.assertRaises(epd.EpdError) as caught:
            self.session.dispatch(handle, x)
        self.assertIn(caught.exception.code_name, ("INVALID_ARGUMENT", "FAILED_PRECONDITION"))
        with self.assertRaises(ValueError):
            self.session.dispatch(handle, np.zeros((1, GROUP["hidden"]), np.float32))
        with self.assertRaises(epd.NotFoundError):
            self.session.dispatch(handle, epd.TensorRef(987654, 0, "fp32", (1, GROUP["hidden"])))
        with self.assertRaises(ValueError):
            epd.TensorRef(1, 0, "fp32", (1, 2, 3, 4, 5))
        with self.assertRaises(ValueError):
            epd.shm_empty((2, 2), "complex64")

    def test_fenced_error_surfaces_and_releases_signal(self):
        self.group("ferr")
        handle = self.session.create_handle("ferr")
        fence = self.session.create_fence()
        wide = epd.shm_like(np.array([[0, 1, 1]], np.int32))  # top_k is 2
        # Posting returns at once; the daemon's refusal (INVALID_ARGUMENT) comes in the
        # background and the client writes the op's signal itself, so nobody waits forever.
        self.session.update(handle, wide, signal=(fence, 7))
        fence.wait(7, timeout_ms=5000)
        with self.assertRaises(epd.InvalidArgumentError) as caught:
            self.session.sync()
        self.assertIn("topk_idx", caught.exception.message)
        self.assertIn("fenced update", caught.exception.message)
        self.session.poll()  # reported once
        # An op that fails on the stream (a bad expert id) was accepted when enqueued: its
        # signal comes in stream order and the next op on the handle reports the cause.
        bad = epd.shm_like(np.array([[0, 42]], np.int32))
        self.session.update(handle, bad, signal=(fence, 8))
        fence.wait(8, timeout_ms=5000)
        self.session.sync()
        x = epd.shm_like(np.ones((1, GROUP["hidden"]), np.float32))
        with self.assertRaises(epd.FailedPreconditionError) as caught:
            self.session.dispatch(handle, x, blocking=True)
        self.assertIn("42", caught.exception.message)

    def test_sync_is_bounded_and_reports_unanswered_ops(self):
        self.group("sync")
        handle = self.session.create_handle("sync")
        fence = self.session.create_fence()
        idx = self.session.register(epd.shm_like(np.array([[0, 1]], np.int32)))
        # Fenced ops are answered once enqueued; a daemon that does not answer (stopped here)
        # must not hold sync() past its bound.
        os.kill(self.daemon.process.pid, signal.SIGSTOP)
        try:
            # The stop reaches each daemon thread asynchronously: one still running could
            # answer the op below.
            wait_until_stopped(self.daemon.process.pid)
            self.session.update(handle, idx, wait=(fence, 1))
            with self.assertRaises(epd.DeadlineExceededError) as caught:
                self.session.sync(timeout_ms=50)
            self.assertIn("unanswered", caught.exception.message)
        finally:
            os.kill(self.daemon.process.pid, signal.SIGCONT)
        fence.signal(1)
        self.session.sync(timeout_ms=5000)

    def test_registration_cache_and_lifetime(self):
        array = epd.shm_empty((4, 8), "fp32")
        block = weakref.ref(memory.find_block(array.ctypes.data, array.nbytes))
        first = self.session.register(array)
        self.assertEqual(self.session.register(array[2:]).buffer_id, first.buffer_id)
        self.assertEqual(self.session.register(array[2:]).offset_bytes, 2 * 8 * 4)
        self.assertEqual(self.session.lookup(array).buffer_id, first.buffer_id)
        self.assertEqual(len(self.session.registrations()), 1)
        del array
        gc.collect()
        self.assertIsNotNone(block(), "a registered shm block must stay alive")
        self.session.release(first.buffer_id)
        gc.collect()
        self.assertIsNone(block(), "released: the block must be freed")
        self.assertEqual(self.session.registrations(), [])
        with self.assertRaises(ValueError):
            self.session.release(first.buffer_id)

    def test_release_by_array_ends_the_registration_of_its_memory(self):
        self.group("relarr")
        handle = self.session.create_handle("relarr")
        idx = epd.shm_like(np.array([[0, 1], [1, 0]], np.int32))
        ref = self.session.register(idx)
        self.assertEqual(self.session.register(idx[1:]).buffer_id, ref.buffer_id)  # one owner
        self.session.update(handle, ref)
        self.session.release(idx[:1])  # any view of the registered array
        self.assertEqual(self.session.registrations(), [])
        with self.assertRaises(epd.NotFoundError):
            self.session.update(handle, ref)
        with self.assertRaises(ValueError):
            self.session.release(epd.shm_empty((4,), "fp32"))

    def test_release_makes_buffer_unknown_to_daemon(self):
        self.group("rel")
        handle = self.session.create_handle("rel")
        idx = epd.shm_like(np.array([[0, 1]], np.int32))
        self.session.update(handle, idx)
        self.session.release(idx)
        with self.assertRaises(epd.NotFoundError):
            self.session.update(handle, epd.TensorRef(self.session.register(idx).buffer_id + 100,
                                                      0, "int32", (1, 2)))

    def test_host_array_outside_shm_is_refused(self):
        with self.assertRaises(ValueError) as caught:
            self.session.register(np.zeros((2, 2), np.float32), "x")
        self.assertIn("shm_empty", str(caught.exception))

    def test_session_close_releases_registrations(self):
        session = self.client.open_session(1)
        array = epd.shm_empty((16,), "fp32")
        block = weakref.ref(memory.find_block(array.ctypes.data, array.nbytes))
        session.register(array)
        del array
        session.close()
        gc.collect()
        self.assertIsNone(block())

    def test_two_ranks_from_threads(self):
        self.group("two", world_size=2)
        sessions = [self.session, self.client.open_session(1)]
        n, H = 3, GROUP["hidden"]
        xs = [epd.shm_like(np.full((n, H), r + 1, np.float32)) for r in range(2)]
        idxs = [epd.shm_like(np.array([[0, 3], [1, 2], [2, -1]], np.int32)) for _ in range(2)]
        outs = [epd.shm_empty((n, H), "fp32") for _ in range(2)]
        handles = [s.create_handle("two") for s in sessions]
        errors = []

        def rank(r):
            try:
                s, h = sessions[r], handles[r]
                s.update(h, idxs[r])
                s.dispatch(h, xs[r])
                s.combine(h, outs[r])
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertFalse(any(t.is_alive() for t in threads))
        self.assertEqual(errors, [])
        for r in range(2):
            expected = np.full((n, H), r + 1, np.float32) * np.array([[2], [2], [1]], np.float32)
            np.testing.assert_array_equal(outs[r], expected)
        sessions[1].close()


if __name__ == "__main__":
    unittest.main()
