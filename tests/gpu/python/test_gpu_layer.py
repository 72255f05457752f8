"""epd.Buffer on the cuda backend with the GPU host's torch (1 GPU, R = 1 group).

Run on a GPU host (README, "Python frontends"):
    EPD_DAEMON=<bundle>/bin/epd /opt/torch/.venv/bin/python \\
        <bundle>/python/tests/run_tests.py test_gpu_layer
Skips (exit 77 through run_tests.py) without torch or a GPU.

Covers: the layer bit for bit against the reference semantics (torch on the CPU), fenced ops
ordered on a torch stream without blocking the host, blocking ops, registered tensors used in
place and kept alive, a CUDA-graph-captured layer replayed 100 times with changing routing
(one daemon op posted per captured op per replay), and no allocation growth (daemon stats).
The frontend-launched layer (data_path="frontend"): bit-exact against the same reference with
no op run by the daemon (its op counters unchanged), a CUDA-graph-captured layer replayed with
new inputs, int32 routing and a caller's out tensor, a custom expert_out refused, a bad expert
id reported by take_errors. A high-throughput group on the frontend-launched path: packed rows
and combine bit-exact (1, T-1, T tokens, no expert at all), a graph replayed with changing
routing, a recv_capacity overflow raised by take_errors and the next layer working.
"""

import gc
import time
import unittest

try:
    import torch
except ImportError:  # the test skips
    torch = None

import epd
from epd_daemon import Daemon

E, H, T, K = 8, 256, 64, 4


def setUpModule():
    if torch is None:
        raise unittest.SkipTest("torch is not installed")
    if not torch.cuda.is_available():
        raise unittest.SkipTest("no CUDA device visible to torch")


def routing(n, seed, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, H, generator=g).to(torch.bfloat16)
    idx = torch.randint(-1, E, (n, K), generator=g, dtype=torch.int64)
    idx[0] = torch.arange(K) % E  # at least one selection
    w = torch.rand(n, K, generator=g, dtype=torch.float32)
    return x.to(device), idx.to(device), w.to(device)


def reference(x, idx, w, scale):
    """R = 1, expert-major: (packed recv_x, counts, out) for the expert z = x * scale, computed
    with the daemon's semantics on the CPU (fp32 accumulation acc = acc + w * z, no FMA)."""
    x, idx, w = x.cpu(), idx.cpu(), w.cpu()
    n = x.shape[0]
    flat = idx.reshape(-1)
    rows, counts, row_of = [], [], {}
    for e in range(E):
        positions = (flat == e).nonzero().flatten().tolist()  # ascending (t, k)
        for p in positions:
            row_of[p] = len(rows)
            rows.append(p // K)
        counts.append(len(positions))
    recv_x = x[torch.tensor(rows, dtype=torch.int64)] if rows else x[:0]
    z = (recv_x.float() * scale).to(torch.bfloat16)
    acc = torch.zeros(n, H, dtype=torch.float32)
    for k in range(K):
        for t in range(n):
            p = t * K + k
            if p in row_of:
                acc[t] = acc[t] + w[t, k] * z[row_of[p]].float()
    return recv_x, torch.tensor(counts, dtype=torch.int32), acc.to(torch.bfloat16)


class _OneGpuLayer(unittest.TestCase):
    """A private cuda daemon on GPU 0 with one bf16 group and a Buffer on DATA_PATH."""
    GROUP = None
    DATA_PATH = None
    ALGORITHM = "low_latency"

    @classmethod
    def setUpClass(cls):
        torch.cuda.set_device(0)
        cls.daemon = Daemon(backend="cuda", gpus="0")
        cls.client = epd.Client(cls.daemon.address)
        cls.session = cls.client.open_session(0, f"{cls.GROUP}-python-test")
        cls.session.create_group(cls.GROUP, world_size=1, experts=E, hidden=H,
                                 max_tokens_per_rank=T, top_k=K, dtype="bf16",
                                 algorithm=cls.ALGORITHM)
        cls.handle = cls.session.create_handle(cls.GROUP, data_path=cls.DATA_PATH)
        cls.buf = epd.Buffer(cls.session, cls.handle)

    @classmethod
    def tearDownClass(cls):
        cls.buf.close()
        cls.session.close()
        cls.client.close()
        cls.daemon.stop()


class GpuLayerTest(_OneGpuLayer):
    # The daemon path (fences, graphs of posted ops) whatever the node would default to.
    GROUP = "gpu"
    DATA_PATH = "daemon"

    def layer(self, x, idx, w, scale, blocking=None):
        recv = self.buf.dispatch(x, idx, w, blocking=blocking)
        recv.recv_x.mul_(scale)  # the expert, in place on every receive row
        return recv, self.buf.combine(blocking=blocking)

    def check(self, recv, out, x, idx, w, scale):
        torch.cuda.synchronize()
        want_x, want_counts, want_out = reference(x, idx, w, scale)
        counts = recv.recv_counts.cpu()
        self.assertTrue(torch.equal(counts, want_counts), f"{counts} != {want_counts}")
        rows = int(counts.sum())
        want_z = (want_x.float() * scale).to(torch.bfloat16)  # the expert ran in place
        self.assertTrue(torch.equal(recv.recv_x[:rows].cpu(), want_z),
                        "recv_x differs from the reference")
        self.assertTrue(torch.equal(out.cpu(), want_out),
                        f"out differs: max |diff| "
                        f"{(out.cpu().float() - want_out.float()).abs().max().item()}")

    def test_bit_exact_fenced_and_blocking(self):
        for i, blocking in enumerate([None, True, None]):
            x, idx, w = routing(T - 3 * i, seed=i)
            recv, out = self.layer(x, idx, w, 2.0, blocking=blocking)
            self.check(recv, out, x, idx, w, 2.0)
            self.assertTrue(recv.recv_x.is_cuda and out.is_cuda)
            self.assertEqual(recv.recv_x.dtype, torch.bfloat16)

    def test_fenced_ops_order_on_torch_stream_without_blocking_host(self):
        x, idx, w = routing(T, seed=7)
        stream = torch.cuda.Stream()
        late_x = torch.zeros_like(x)
        torch.cuda.synchronize()
        with torch.cuda.stream(stream):
            torch.cuda._sleep(200_000_000)  # ~100 ms of GPU time ahead of the copy
            late_x.copy_(x)
            started = time.perf_counter()
            recv = self.buf.dispatch(late_x, idx, w)
            host_s = time.perf_counter() - started
            recv.recv_x.mul_(2.0)
            out = self.buf.combine()
            snapshot = out.clone()
        self.assertLess(host_s, 0.05, "dispatch blocked the host on the stream's work")
        stream.synchronize()
        self.check(recv, snapshot, x, idx, w, 2.0)

    def test_registered_tensors_in_place_and_kept_alive(self):
        # 64 MiB: a caching-allocator segment of its own (not shared with the staging buffers).
        block = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
        x = block[1 << 20:(1 << 20) + T * H * 2].view(torch.bfloat16).view(T, H)
        ref = self.session.register(x)
        base = [r for r in self.session.registrations() if r[0] == ref.buffer_id][0][1]
        self.assertEqual(ref.offset_bytes, x.data_ptr() - base)
        src, idx, w = routing(T, seed=11)
        x.copy_(src)
        staged = self.buf._stage_x["array"]
        staged.zero_()
        recv, out = self.layer(x, idx, w, 2.0)
        self.check(recv, out, src, idx, w, 2.0)
        self.assertEqual(int(staged.abs().sum().item()), 0, "a registered x must not be staged")
        allocated = torch.cuda.memory_allocated()
        del block, x
        gc.collect()
        torch.cuda.empty_cache()
        self.assertEqual(torch.cuda.memory_allocated(), allocated,
                         "the registration must keep the tensor's memory alive")
        self.session.release(ref.buffer_id)
        gc.collect()
        self.assertLess(torch.cuda.memory_allocated(), allocated)

    def test_graph_replayed_100_times_with_changing_routing(self):
        n = T // 2
        x, idx, w = routing(n, seed=100)
        static_x, static_idx, static_w = x.clone(), idx.clone(), w.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: staging allocated and registered
            self.layer(static_x, static_idx, static_w, 1.5)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            recv, out = self.layer(static_x, static_idx, static_w, 1.5)
        ops = self.buf.graph_ops()
        self.assertEqual(len(ops), 3)  # update, dispatch, combine
        self.assertEqual([op.posts for op in ops], [0, 0, 0])
        before = self.client.stats()
        for i in range(100):
            x, idx, w = routing(n, seed=1000 + i)
            static_x.copy_(x)
            static_idx.copy_(idx)
            static_w.copy_(w)
            graph.replay()
            self.check(recv, out, x, idx, w, 1.5)
        self.session.sync()
        self.assertEqual([op.posts for op in ops], [100, 100, 100])
        after = self.client.stats()
        self.assertEqual(after.allocations, before.allocations, "replays allocated")
        self.assertEqual(after.live_bytes, before.live_bytes)
        deadline = time.monotonic() + 10  # completions are counted by the daemon's own thread
        while self.client.stats().dispatch_completed - before.dispatch_completed < 100:
            self.assertLess(time.monotonic(), deadline, "100 replayed dispatches not completed")
            time.sleep(0.01)
        # Eager after replays still agrees (it synchronizes behind the captured host nodes).
        x, idx, w = routing(n, seed=5)
        recv2, out2 = self.layer(x, idx, w, 1.5)
        self.check(recv2, out2, x, idx, w, 1.5)
        del graph

    def test_no_allocation_growth_eager(self):
        x, idx, w = routing(T, seed=3)
        self.layer(x, idx, w, 1.0)
        torch.cuda.synchronize()
        before, registrations = self.client.stats(), len(self.session.registrations())
        for i in range(50):
            self.layer(x[: T - i % 8], idx[: T - i % 8], w[: T - i % 8], 1.0)
        torch.cuda.synchronize()
        self.session.sync()
        after = self.client.stats()
        self.assertEqual(after.allocations, before.allocations)
        self.assertEqual(len(self.session.registrations()), registrations)


if __name__ == "__main__":
    unittest.main()


class GpuFrontendLayerTest(_OneGpuLayer):
    """The same layer on the frontend-launched data path: the kernels run on the torch stream
    of this process, so the daemon runs (and counts) no dispatch or combine."""
    GROUP = "gpu-frontend"
    DATA_PATH = "frontend"

    def test_bit_exact_without_daemon_ops(self):
        self.assertEqual(self.handle.data_path, "frontend")
        before = self.client.stats()
        for i, blocking in enumerate([None, True, None]):
            x, idx, w = routing(T - 5 * i, seed=20 + i)
            recv = self.buf.dispatch(x, idx, w, blocking=blocking)
            recv.recv_x.mul_(2.0)
            out = self.buf.combine(blocking=blocking)
            torch.cuda.synchronize()
            self.buf.take_errors()
            GpuLayerTest.check(self, recv, out, x, idx, w, 2.0)
            self.assertTrue(recv.recv_x.is_cuda and out.is_cuda)
        after = self.client.stats()
        for counter in ("update_completed", "update_failed", "dispatch_completed",
                        "dispatch_failed", "combine_completed", "combine_failed"):
            self.assertEqual(getattr(after, counter), getattr(before, counter),
                             f"{counter}: the daemon ran an op of the frontend-launched layer")

    def test_graph_replayed_with_new_inputs(self):
        # Captured after an eager layer; each replay takes fresh op numbers on the device and
        # is bit-exact with the inputs written into the captured tensors before it.
        n = T // 2
        x, idx, w = routing(n, seed=60)
        static_x, static_idx, static_w = x.clone(), idx.clone(), w.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: one eager layer
            self.buf.dispatch(static_x, static_idx, static_w).recv_x.mul_(1.5)
            self.buf.combine()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self.buf.take_errors()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            recv = self.buf.dispatch(static_x, static_idx, static_w)
            recv.recv_x.mul_(1.5)
            out = self.buf.combine()
        before = self.client.stats()
        for i in range(4):
            x, idx, w = routing(n, seed=600 + i)
            static_x.copy_(x)
            static_idx.copy_(idx)
            static_w.copy_(w)
            graph.replay()
            torch.cuda.synchronize()
            self.buf.take_errors()
            GpuLayerTest.check(self, recv, out, x, idx, w, 1.5)
        self.assertEqual(self.client.stats().dispatch_completed, before.dispatch_completed)
        del graph
        # Eager after replays continues the same numbering.
        x, idx, w = routing(n, seed=70)
        recv = self.buf.dispatch(x, idx, w)
        recv.recv_x.mul_(2.0)
        out = self.buf.combine()
        torch.cuda.synchronize()
        self.buf.take_errors()
        GpuLayerTest.check(self, recv, out, x, idx, w, 2.0)

    def test_int32_routing_and_out_tensor(self):
        x, idx, w = routing(T // 2, seed=31)
        out = torch.empty(T // 2, H, dtype=torch.bfloat16, device="cuda")
        recv = self.buf.dispatch(x, idx.to(torch.int32), w)
        recv.recv_x.mul_(0.5)
        got = self.buf.combine(out=out)
        self.assertIs(got, out)
        torch.cuda.synchronize()
        self.buf.take_errors()
        GpuLayerTest.check(self, recv, out, x, idx, w, 0.5)

    def test_custom_expert_out_refused(self):
        x, idx, w = routing(8, seed=41)
        recv = self.buf.dispatch(x, idx, w)
        with self.assertRaisesRegex(ValueError, "in place"):
            self.buf.combine(torch.zeros_like(recv.recv_x))
        self.buf.combine(recv.recv_x)  # recv_x itself is the in-place output: accepted
        torch.cuda.synchronize()
        self.buf.take_errors()

    def test_later_bad_expert_id_reported_by_take_errors(self):  # runs last (unittest sorts)
        x, idx, w = routing(8, seed=51)
        idx[1, 0] = E + 3
        self.buf.dispatch(x, idx, w)
        torch.cuda.synchronize()
        with self.assertRaises(epd.EpdError):
            self.buf.take_errors()
        self.buf.take_errors()  # reported once


def ht_reference(x, idx, scale):
    """R = 1, high-throughput: (packed recv_x, recv_counts, out) for the expert z = x * scale.
    One row per token with any expert, in token order; recv_counts[e] counts a token once per
    expert; combine adds each row once with weight 1 (fp32, then bf16: out is z's row)."""
    x, idx = x.cpu(), idx.cpu()
    rows = [t for t in range(x.shape[0]) if bool((idx[t] >= 0).any())]
    counts = [sum(1 for t in rows if bool((idx[t] == e).any())) for e in range(E)]
    recv_x = x[torch.tensor(rows, dtype=torch.int64)] if rows else x[:0]
    z = (recv_x.float() * scale).to(torch.bfloat16)
    out = torch.zeros_like(x)
    for row, t in enumerate(rows):
        out[t] = z[row]
    return recv_x, torch.tensor(counts, dtype=torch.int32), out


class GpuFrontendHighThroughputLayerTest(_OneGpuLayer):
    """A high-throughput group on the frontend-launched data path: the same kernels as the
    daemon's (packed rows, weight-1 combine), launched on this process's torch stream."""
    GROUP = "gpu-frontend-ht"
    DATA_PATH = "frontend"
    ALGORITHM = "high_throughput"

    def layer(self, x, idx, w, scale, buf=None):
        buf = buf if buf is not None else self.buf
        recv = buf.dispatch(x, idx, w)
        recv.recv_x.mul_(scale)  # the expert, in place on every receive row
        return recv, buf.combine()

    def check(self, recv, out, x, idx, scale):
        torch.cuda.synchronize()
        self.buf.take_errors()
        want_x, want_counts, want_out = ht_reference(x, idx, scale)
        rows = want_x.shape[0]
        self.assertEqual(int(self.handle.view("recv_rank_counts").cpu()[0]), rows)
        counts = recv.recv_counts.cpu()
        self.assertTrue(torch.equal(counts, want_counts), f"{counts} != {want_counts}")
        want_z = (want_x.float() * scale).to(torch.bfloat16)
        self.assertTrue(torch.equal(recv.recv_x[:rows].cpu(), want_z),
                        "recv_x differs from the reference")
        self.assertTrue(torch.equal(out.cpu(), want_out), "out differs from the reference")

    def test_bit_exact_without_daemon_ops(self):
        self.assertEqual(self.handle.data_path, "frontend")
        self.assertTrue(self.handle.high_throughput)
        before = self.client.stats()
        for i, n in enumerate([T, 1, T - 1]):
            x, idx, w = routing(n, seed=200 + i)
            recv, out = self.layer(x, idx, w, 2.0)
            self.check(recv, out, x, idx, 2.0)
        x, idx, w = routing(T, seed=210)
        idx.fill_(-1)  # no expert at all: no row, out all zero
        recv, out = self.layer(x, idx, w, 2.0)
        self.check(recv, out, x, idx, 2.0)
        after = self.client.stats()
        for counter in ("dispatch_completed", "dispatch_failed", "combine_completed",
                        "combine_failed"):
            self.assertEqual(getattr(after, counter), getattr(before, counter),
                             f"{counter}: the daemon ran an op of the frontend-launched layer")

    def test_graph_replayed_with_changing_routing(self):
        n = T - 7
        x, idx, w = routing(n, seed=300)
        static_x, static_idx, static_w = x.clone(), idx.clone(), w.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: one eager layer
            self.layer(static_x, static_idx, static_w, 1.5)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self.buf.take_errors()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            recv, out = self.layer(static_x, static_idx, static_w, 1.5)
        for i in range(4):
            x, idx, w = routing(n, seed=3000 + i)
            static_x.copy_(x)
            static_idx.copy_(idx)
            static_w.copy_(w)
            graph.replay()
            self.check(recv, out, x, idx, 1.5)
        del graph

    def test_recv_capacity_overflow_raised_then_next_layer_works(self):
        name = "gpu-frontend-ht-small"
        self.session.create_group(name, world_size=1, experts=E, hidden=H,
                                  max_tokens_per_rank=T, top_k=K, dtype="bf16",
                                  algorithm="high_throughput", recv_capacity=T // 4)
        handle = self.session.create_handle(name, data_path="frontend")
        buf = epd.Buffer(self.session, handle)
        try:
            x, idx, w = routing(T, seed=400)
            idx[:, 0] = 3  # every token has an expert: T rows for a rank that holds T / 4
            buf.dispatch(x, idx, w)
            torch.cuda.synchronize()
            with self.assertRaises(epd.EpdError) as raised:
                buf.take_errors()
            self.assertEqual(raised.exception.code_name, "RESOURCE_EXHAUSTED")
            self.assertIn(f"would receive {T} rows, more than recv_capacity={T // 4}",
                          raised.exception.message)
            x, idx, w = routing(T // 4, seed=401)
            recv, out = self.layer(x, idx, w, 0.5, buf=buf)
            torch.cuda.synchronize()
            buf.take_errors()
            _, _, want_out = ht_reference(x, idx, 0.5)
            self.assertTrue(torch.equal(out.cpu(), want_out), "out after the overflow")
        finally:
            buf.close()
