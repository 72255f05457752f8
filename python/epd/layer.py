"""Buffer: a DeepEP-shaped MoE layer over one epd handle.

    buf = epd.Buffer(session, handle)                  # or session.create_buffer(...)
    recv = buf.dispatch(x, topk_idx, topk_weights)     # receive views (zero-copy)
    ... experts on recv.recv_x (expert l: rows recv_offsets[l] .. + recv_counts[l]) ...
    out = buf.combine()                                # expert outputs in recv_x, in place
    out = buf.combine(expert_out)                      # or in a [recv_rows, H] tensor

Ordering. On the cuda backend the ops are fenced on torch.cuda.current_stream() by default:
the call posts them to the daemon and enqueues on the stream "fence_in = v" (the daemon may
read the inputs) and "wait fence_out >= v" (outputs complete), so the host never blocks and
later kernels on the stream see the results. blocking=True instead synchronizes the stream,
runs the ops and returns after they completed. On the cpu backend ops are blocking by default;
blocking=False fences them with host fences (posted, then signalled and awaited here).

Frontend-launched handles (data_path="frontend", or "default" where the daemon's node picks
it): dispatch and combine launch epd's kernels on torch.cuda.current_stream() themselves (no
daemon op, no fence); the receive views are the same. Device-side errors (bad expert ids,
capacity overflow) are raised by blocking=True calls (which synchronize the stream) or by
take_errors() once the stream passed the ops. Expert outputs must be written into recv_x in
place (combine(expert_out) is refused unless expert_out is recv_x). CUDA graphs capture the
kernels themselves (torch.cuda.graph, non-blocking calls, after one eager layer); replays
take fresh op numbers on the device, with the captured tensors' new contents.

Inputs. A tensor in registered memory (Session.register) is used in place; any other tensor
is copied (on the current stream) into a staging buffer the layer owns and registered once.
Results (receive views, combine's output) are the layer's memory: valid until the next
dispatch / combine; clone what must live longer.

CUDA graphs. Run the layer once eagerly (it allocates and registers its staging then), then
capture. Inside a capture each op becomes a stream op (epd_stream_op_enqueue): a host node
that posts a fresh daemon op on every replay, "fence_in = 1", "wait fence_out >= 1" and a
re-arm of both fences to 0. Fence values are therefore constant across replays, and every
captured op has a fence pair of its own (taken from a pool of `graph_fence_pairs`), separate
from the monotonic pair of eager ops. A graph's tensors are static: change routing by writing
new values into the captured topk_idx / topk_weights tensors before replaying. Eager calls on
a Buffer whose ops were captured synchronize the stream first, so the daemon receives ops in
stream order. Destroy the graphs before closing the Buffer (their host nodes use its ops).
"""

from collections import namedtuple

from . import memory, tensors
from ._lib import OP_COMBINE, OP_DISPATCH, OP_UPDATE, lib
from .values import TensorRef, cuda_stream_pointer
from .errors import EpdError

import ctypes

DispatchResult = namedtuple("DispatchResult", [
    "recv_x", "recv_counts", "recv_offsets", "recv_src", "recv_weights", "recv_topk_idx",
    "recv_topk_weights"])


class _StreamOp:
    """One captured op with its own fence pair (see the module docstring)."""

    def __init__(self, session, handle, kind, a, b, fence_in, fence_out):
        op = ctypes.c_void_p()
        lib().stream_op_create(session.handle, handle.handle, kind, ctypes.byref(a.c),
                               ctypes.byref(b.c) if b is not None else None, fence_in.handle,
                               fence_out.handle, ctypes.byref(op))
        self._op = op
        self.fences = (fence_in, fence_out)

    def enqueue(self, stream):
        lib().stream_op_enqueue(self._op, ctypes.c_void_p(cuda_stream_pointer(stream)))

    @property
    def posts(self):
        return lib().stream_op_posts(self._op)

    def destroy(self):
        op, self._op = self._op, None
        if op:
            lib().stream_op_destroy(op)


class Buffer:
    """The layer over `handle` of `session` (see the module docstring)."""

    def __init__(self, session, handle, *, graph_fence_pairs=8):
        self.session = session
        self.handle = handle
        info = handle.info
        self.on_device = handle.on_device
        self.hidden = info.hidden
        self.top_k = info.top_k
        self.max_tokens = info.max_tokens_per_rank
        self.recv_rows = info.recv_rows
        self.dtype = info.dtype
        self.frontend = handle.data_path == "frontend"
        self._fence_in = session.create_fence()
        self._fence_out = session.create_fence()
        self._value = 0
        self._tokens = None  # n of the last dispatch
        self._as_torch = self.on_device
        self._graph_pairs = []
        self._graph_ops = {}
        if self.on_device:
            import torch
            self._torch = torch
            if not self.frontend:  # the frontend-launched path posts nothing to capture
                self._graph_pairs = [(session.create_fence(), session.create_fence())
                                     for _ in range(graph_fence_pairs)]
        else:
            self._torch = None
        T, H, K = self.max_tokens, self.hidden, self.top_k
        self._stage_x = self._allocate((T, H), self.dtype)
        self._stage_idx = self._allocate((T, K), tensors.INT64)
        self._stage_weights = self._allocate((T, K), tensors.FP32)
        self._stage_out = self._allocate((T, H), self.dtype)
        self._stage_expert_out = None  # [recv_rows, H], on first use (may be large)

    # ---- public ----
    def dispatch(self, x, topk_idx, topk_weights=None, *, blocking=None):
        """Routes x [n, H] by topk_idx [n, K] (weights [n, K] fp32 or None: all 1); returns the
        DispatchResult of receive views (torch tensors when x is one, numpy arrays otherwise)."""
        n = self._check_tokens(x, topk_idx, topk_weights)
        if self.frontend:
            self._frontend_dispatch(x, topk_idx, topk_weights, n, blocking)
            self._tokens = n
            self._as_torch = True
            return self.receive_views()
        as_torch = tensors.is_torch(x)
        idx = self._input(topk_idx, "topk_idx", self._stage_idx, n)
        weights = (self._input(topk_weights, "topk_weights", self._stage_weights, n)
                   if topk_weights is not None else None)
        x_ref = self._input(x, "x", self._stage_x, n)
        self._run([(OP_UPDATE, idx, weights), (OP_DISPATCH, x_ref, None)], blocking)
        self._tokens = n
        self._as_torch = as_torch or self.on_device
        return self.receive_views()

    def combine(self, expert_out=None, *, out=None, blocking=None):
        """Combines the expert outputs (None: recv_x, written in place; else a [recv_rows, H]
        tensor) of the last dispatch; returns out [n, H] (the layer's buffer unless `out`)."""
        if self._tokens is None:
            raise RuntimeError("epd.Buffer.combine: no dispatch before it")
        n = self._tokens
        if self.frontend:
            return self._frontend_combine(expert_out, out, n, blocking)
        expert = None
        if expert_out is not None:
            shape = tuple(expert_out.shape)
            if shape != (self.recv_rows, self.hidden):
                raise ValueError(f"expert_out has shape {shape}, expected "
                                 f"({self.recv_rows}, {self.hidden})")
            if self._stage_expert_out is None and self.session.lookup(expert_out) is None:
                self._require_eager("staging expert_out")
                self._stage_expert_out = self._allocate((self.recv_rows, self.hidden), self.dtype)
            expert = self._input(expert_out, "expert_out", self._stage_expert_out, self.recv_rows)
        target = None
        if out is not None:
            if tuple(out.shape) != (n, self.hidden):
                raise ValueError(f"out has shape {tuple(out.shape)}, expected ({n}, {self.hidden})")
            out_ref = self.session.lookup(out)
            if out_ref is None:
                target, out_ref = out, self._stage_ref(self._stage_out, n)
        else:
            out_ref = self._stage_ref(self._stage_out, n)
        self._run([(OP_COMBINE, out_ref, expert)], blocking)
        if out is None:
            return self._stage_view(self._stage_out, n)
        if target is not None:
            self._copy(target, self._stage_view(self._stage_out, n))
        return out

    def take_errors(self):
        """Frontend-launched path: raises the first device error of the ops launched since the
        last call (synchronize the stream first). Nothing to do on the daemon's streams."""
        self.handle.take_errors()

    def receive_views(self):
        """The handle's receive tensors (None where the layout has none)."""
        h = self.handle
        as_torch = self._as_torch
        return DispatchResult(*(h.view(name, as_torch=as_torch) for name in DispatchResult._fields))

    def graph_ops(self):
        """The captured stream ops (tests read their post counts)."""
        return list(self._graph_ops.values())

    def close(self):
        """Releases the layer's staging memory, fences and captured ops (idempotent)."""
        for op in self._graph_ops.values():
            op.destroy()
        self._graph_ops.clear()
        stages = [self._stage_x, self._stage_idx, self._stage_weights, self._stage_out,
                  self._stage_expert_out]
        self._stage_x = self._stage_idx = self._stage_weights = self._stage_out = None
        self._stage_expert_out = None
        for stage in stages:
            if stage is not None and stage["ref"] is not None and self.session._handle:
                try:
                    self.session.release(stage["array"])
                except (ValueError, EpdError):
                    pass  # the session ended meanwhile: the daemon released it
        for fence in [self._fence_in, self._fence_out] + [f for p in self._graph_pairs for f in p]:
            fence.destroy_quietly()

    # ---- staging ----
    def _allocate(self, shape, dtype):
        """A registered staging tensor of the layer: torch on device, shared memory on host."""
        if self.on_device:
            torch = self._torch
            array = torch.zeros(shape, dtype=tensors.torch_dtype(dtype),
                                device=f"cuda:{self.handle.device}")
            if self.frontend:  # launched here: the daemon never reads the layer's memory
                return {"array": array, "ref": None, "torch": None}
        else:
            array = memory.shm_empty(shape, dtype)
        ref = self.session.register(array, "staging")
        return {"array": array, "ref": ref, "torch": None}

    def _stage_ref(self, stage, rows):
        ref = stage["ref"]
        return TensorRef(ref.buffer_id, ref.offset_bytes, ref.dtype, (rows,) + ref.shape[1:])

    def _stage_view(self, stage, rows):
        if self.on_device:
            return stage["array"][:rows]
        if self._as_torch:
            if stage["torch"] is None:
                stage["torch"] = memory_view_torch(stage["array"], stage["ref"].dtype)
            return stage["torch"][:rows]
        return stage["array"][:rows]

    def _input(self, array, what, stage, rows):
        ref = self.session.lookup(array)
        if ref is not None:
            return ref
        if stage is None:
            raise ValueError(f"{what} is not in registered memory and has no staging buffer")
        view = self._stage_view_for(stage, rows, array)
        self._copy(view, array)
        return self._stage_ref(stage, rows)

    def _stage_view_for(self, stage, rows, source):
        if self.on_device or not tensors.is_torch(source):
            return stage["array"][:rows]
        if stage["torch"] is None:
            stage["torch"] = memory_view_torch(stage["array"], stage["ref"].dtype)
        return stage["torch"][:rows]

    @staticmethod
    def _copy(destination, source):
        if tensors.is_torch(destination):
            destination.copy_(source if tensors.is_torch(source) else
                              _torch_from(source, destination))
        else:
            import numpy as np
            np.copyto(destination, np.asarray(source), casting="same_kind")

    def _check_tokens(self, x, topk_idx, topk_weights):
        dtype = tensors.describe(x, "x").dtype
        if dtype != self.dtype:
            raise ValueError(f"x has dtype {tensors.DTYPE_NAMES[dtype]}, the group's is "
                             f"{tensors.DTYPE_NAMES[self.dtype]}")
        shape = tuple(x.shape)
        if len(shape) != 2 or shape[1] != self.hidden:
            raise ValueError(f"x has shape {shape}, expected (n, {self.hidden})")
        n = shape[0]
        if n > self.max_tokens:
            raise ValueError(f"x has {n} tokens, more than the group's max_tokens_per_rank "
                             f"{self.max_tokens}")
        if tuple(topk_idx.shape) != (n, self.top_k):
            raise ValueError(f"topk_idx has shape {tuple(topk_idx.shape)}, expected "
                             f"({n}, {self.top_k})")
        if topk_weights is not None and tuple(topk_weights.shape) != (n, self.top_k):
            raise ValueError(f"topk_weights has shape {tuple(topk_weights.shape)}, expected "
                             f"({n}, {self.top_k})")
        return n

    # ---- frontend-launched path ----
    def _device_input(self, array, stage, rows, dtypes):
        """`array` itself when a contiguous tensor on the handle's GPU of one of `dtypes`, else
        a copy into `stage` (on the current stream)."""
        if (tensors.is_torch(array) and array.is_cuda and array.device.index == self.handle.device
                and array.is_contiguous() and array.dtype in dtypes):
            return array
        view = stage["array"][:rows]
        view.copy_(array if tensors.is_torch(array) else _torch_from(array, view))
        return view

    def _frontend_finish(self, stream, blocking):
        if blocking and self._capturing():
            raise RuntimeError("epd.Buffer: blocking ops cannot be captured")
        if blocking:
            stream.synchronize()
            self.handle.take_errors()

    def _frontend_dispatch(self, x, topk_idx, topk_weights, n, blocking):
        torch = self._torch
        stream = torch.cuda.current_stream(self.handle.device)
        s = ctypes.c_void_p(stream.cuda_stream)
        idx = self._device_input(topk_idx, self._stage_idx, n, (torch.int32, torch.int64))
        idx_code = tensors.INT32 if idx.dtype == torch.int32 else tensors.INT64
        weights = (self._device_input(topk_weights, self._stage_weights, n, (torch.float32,))
                   if topk_weights is not None else None)
        x_dev = self._device_input(x, self._stage_x, n, (tensors.torch_dtype(self.dtype),))
        h = self.handle.handle
        lib().handle_update(h, ctypes.c_void_p(idx.data_ptr()), idx_code,
                            ctypes.c_void_p(weights.data_ptr()) if weights is not None else None,
                            n, s)
        lib().handle_dispatch(h, ctypes.c_void_p(x_dev.data_ptr()), s)
        self._frontend_finish(stream, blocking)

    def _frontend_combine(self, expert_out, out, n, blocking):
        torch = self._torch
        recv_x = self.handle.view("recv_x")
        if expert_out is not None and not (tensors.is_torch(expert_out)
                                           and expert_out.data_ptr() == recv_x.data_ptr()):
            raise ValueError("epd.Buffer.combine: the frontend-launched data path combines the "
                             "expert outputs in recv_x in place (peers read them there); write "
                             "them into recv_x and call combine() without expert_out")
        if out is not None and tuple(out.shape) != (n, self.hidden):
            raise ValueError(f"out has shape {tuple(out.shape)}, expected ({n}, {self.hidden})")
        direct = (out is not None and tensors.is_torch(out) and out.is_cuda
                  and out.device.index == self.handle.device and out.is_contiguous()
                  and out.dtype == tensors.torch_dtype(self.dtype))
        target = out if direct else self._stage_out["array"][:n]
        stream = torch.cuda.current_stream(self.handle.device)
        s = ctypes.c_void_p(stream.cuda_stream)
        lib().handle_combine(self.handle.handle, ctypes.c_void_p(target.data_ptr()), None, s)
        self._frontend_finish(stream, blocking)
        if out is None or direct:
            return target
        self._copy(out, target)
        return out

    # ---- ordering ----
    def _capturing(self):
        return self.on_device and self._torch.cuda.is_current_stream_capturing()

    def _require_eager(self, what):
        if self._capturing():
            raise RuntimeError(f"epd.Buffer: {what} allocates; run the layer once before capture")

    def _run(self, ops, blocking):
        session = self.session
        if self.on_device:
            stream = self._torch.cuda.current_stream()
            if self._capturing():
                if blocking:
                    raise RuntimeError("epd.Buffer: blocking ops cannot be captured")
                for kind, a, b in ops:
                    self._graph_op(kind, a, b).enqueue(stream)
                return
            if blocking or self._graph_ops:
                # Blocking: inputs were staged on the stream. Captured ops: their host nodes
                # post from the stream, so let them run before posting from here.
                stream.synchronize()
        elif blocking is None:
            blocking = True
        if blocking:
            for kind, a, b in ops:
                self._post(kind, a, b, session.options(blocking=True))
            return
        self._value += 1
        value = self._value
        last = len(ops) - 1
        for i, (kind, a, b) in enumerate(ops):
            options = session.options(wait=(self._fence_in, value) if i == 0 else None,
                                      signal=(self._fence_out, value) if i == last else None,
                                      blocking=False)
            self._post(kind, a, b, options)
        if self.on_device:
            self._fence_in.signal_on_stream(value, stream)
            self._fence_out.wait_on_stream(value, stream)
        else:
            self._fence_in.signal(value)
            try:
                self._fence_out.wait(value)
            except Exception:
                session.poll()  # the op's own error explains the timeout better
                raise
            session.poll()

    def _post(self, kind, a, b, options):
        s, h = self.session.handle, self.handle.handle
        if kind == OP_UPDATE:
            lib().update(s, h, ctypes.byref(a.c), ctypes.byref(b.c) if b else None,
                         ctypes.byref(options))
        elif kind == OP_DISPATCH:
            lib().dispatch(s, h, ctypes.byref(a.c), ctypes.byref(options))
        else:
            lib().combine(s, h, ctypes.byref(a.c), ctypes.byref(b.c) if b else None,
                          ctypes.byref(options))

    def _graph_op(self, kind, a, b):
        key = (kind, a.buffer_id, a.offset_bytes, a.shape,
               None if b is None else (b.buffer_id, b.offset_bytes, b.shape))
        op = self._graph_ops.get(key)
        if op is None:
            if len(self._graph_ops) >= len(self._graph_pairs):
                raise RuntimeError(f"epd.Buffer: more than {len(self._graph_pairs)} distinct "
                                   "captured ops; raise graph_fence_pairs")
            fence_in, fence_out = self._graph_pairs[len(self._graph_ops)]
            op = _StreamOp(self.session, self.handle, kind, a, b, fence_in, fence_out)
            self._graph_ops[key] = op
        return op


def memory_view_torch(array, dtype):
    """A torch CPU tensor over a numpy array (zero-copy; bf16 from its uint16 bits)."""
    import numpy as np
    import torch
    if dtype == tensors.BF16:  # torch.from_numpy takes no uint16 (before torch 2.3)
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _torch_from(array, like):
    import torch
    return torch.as_tensor(array).to(like.dtype)
