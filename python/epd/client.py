"""Client, Session, Fence, Handle: the epd API over libepd_c (see client/c_api/epd_c.h).

Every failure raises an EpdError subclass carrying the gRPC code and the daemon's message.
"""

import ctypes
import threading
from dataclasses import dataclass

from . import memory, tensors
from ._lib import (NO_TENSOR, MAX_DIMS, ClientOptions, GroupConfig, HandleInfo, NodeInfo,
                   OpOptions, Stats, TensorRefC, lib)

LAYOUTS = {"default": 0, "expert_major": 1, "rank_major": 2}
ALGORITHMS = {"default": 0, "low_latency": 1, "high_throughput": 2}
# "default": what the daemon reports (its streams today); "frontend" is reserved.
DATA_PATHS = {"default": 0, "daemon": 1, "frontend": 2}


def _choice(table, value, what):
    if isinstance(value, int):
        return value
    try:
        return table[value]
    except KeyError:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(table)}") from None


def cuda_stream_pointer(stream):
    """The cudaStream_t of a torch.cuda.Stream, an object with .cuda_stream, an int or None."""
    if stream is None:
        return None
    if isinstance(stream, int):
        return stream
    return int(stream.cuda_stream)


class TensorRef:
    """(buffer id, byte offset, dtype, shape) of registered memory, as ops name tensors."""

    __slots__ = ("buffer_id", "offset_bytes", "dtype", "shape", "c")

    def __init__(self, buffer_id, offset_bytes, dtype, shape):
        shape = tuple(int(s) for s in shape)
        if not 1 <= len(shape) <= MAX_DIMS:
            raise ValueError(f"tensor of {len(shape)} dimensions: epd takes 1..{MAX_DIMS}")
        self.buffer_id, self.offset_bytes = int(buffer_id), int(offset_bytes)
        self.dtype, self.shape = tensors.dtype_code(dtype), shape
        self.c = TensorRefC(self.buffer_id, self.offset_bytes, self.dtype, len(shape),
                            (ctypes.c_int64 * MAX_DIMS)(*shape))

    def __repr__(self):
        return (f"TensorRef(buffer {self.buffer_id} +{self.offset_bytes}, "
                f"{tensors.DTYPE_NAMES[self.dtype]}{list(self.shape)})")


@dataclass(frozen=True)
class NodeInfoResult:
    daemon_version: str
    backend: str
    ranks: int
    gpus: int
    nccl_version: str
    groups: int
    default_data_path: str


@dataclass(frozen=True)
class StatsResult:
    sessions_open: int
    sessions_total: int
    allocations: int
    frees: int
    live_bytes: int
    update_completed: int
    update_failed: int
    dispatch_completed: int
    dispatch_failed: int
    combine_completed: int
    combine_failed: int


class Client:
    """A connection to the daemon. `address`: "unix:///run/epd/epd.sock" or "host:port"."""

    def __init__(self, address="unix:///run/epd/epd.sock", *, connect_timeout_ms=None,
                 rpc_timeout_ms=None, op_timeout_ms=None, close_timeout_ms=None):
        options = ClientOptions()
        lib().client_options_init(ctypes.byref(options))
        for name, value in (("connect_timeout_ms", connect_timeout_ms),
                            ("rpc_timeout_ms", rpc_timeout_ms), ("op_timeout_ms", op_timeout_ms),
                            ("close_timeout_ms", close_timeout_ms)):
            if value is not None:
                setattr(options, name, int(value))
        self.op_timeout_ms = options.op_timeout_ms
        self.address = address
        handle = ctypes.c_void_p()
        lib().client_connect(address.encode(), ctypes.byref(options), ctypes.byref(handle))
        self._handle = handle

    def node_info(self):
        info = NodeInfo()
        lib().client_node_info(self._live(), ctypes.byref(info))
        paths = {v: k for k, v in DATA_PATHS.items()}
        return NodeInfoResult(info.daemon_version.decode(), info.backend.decode(), info.ranks,
                              info.gpus, info.nccl_version.decode(), info.groups,
                              paths.get(info.default_data_path, "daemon"))

    def stats(self):
        stats = Stats()
        lib().client_stats(self._live(), ctypes.byref(stats))
        return StatsResult(*(getattr(stats, name) for name, _ in Stats._fields_[1:]))

    def open_session(self, rank, client_name="python"):
        return Session(self, rank, client_name)

    def close(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            lib().client_destroy(handle)

    def _live(self):
        if not self._handle:
            raise ValueError("epd.Client is closed")
        return self._handle

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the OS cleans up
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Registration:
    """One registered range and what keeps its memory alive until it is released."""

    __slots__ = ("buffer_id", "base", "size", "on_device", "device", "keep")

    def __init__(self, buffer_id, base, size, on_device, device, keep):
        self.buffer_id, self.base, self.size = buffer_id, base, size
        self.on_device, self.device, self.keep = on_device, device, keep


class Session:
    """One frontend's session, bound to a node rank. Owns fences, handles and registrations;
    closing it (or the process ending) makes the daemon release them."""

    def __init__(self, client, rank, client_name="python"):
        self.client = client
        handle = ctypes.c_void_p()
        lib().session_open(client._live(), int(rank), client_name.encode(), ctypes.byref(handle))
        self._handle = handle
        self.id = lib().session_id(handle)
        self.rank = lib().session_rank(handle)
        self.op_timeout_ms = client.op_timeout_ms
        self._lock = threading.Lock()
        # (kind, device, base) -> _Registration; the registration cache.
        self._registrations = {}
        self._children = []  # weak lifetime: fences / handles closed before the session

    # ---- lifetime ----
    def close(self):
        """Ends the session (idempotent)."""
        handle, self._handle = getattr(self, "_handle", None), None
        if not handle:
            return
        for child in reversed(self._children):
            child._detach()
        self._children.clear()
        with self._lock:
            self._registrations.clear()
        try:
            lib().session_close(handle)
        finally:
            lib().session_destroy(handle)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the daemon ends the session
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def handle(self):
        if not self._handle:
            raise ValueError(f"epd.Session {getattr(self, 'id', '?')} is closed")
        return self._handle

    def poll(self):
        """Raises the first error of a fenced op answered since the last report."""
        lib().session_poll(self.handle)

    def sync(self, timeout_ms=None):
        """Waits for the answers of every posted op; raises the first fenced-op error."""
        lib().session_sync(self.handle, int(self.op_timeout_ms if timeout_ms is None
                                            else timeout_ms))

    # ---- memory ----
    def register(self, array, what="tensor"):
        """TensorRef of `array`, registering the memory that holds it on first use.

        CUDA tensors: the whole cudaMalloc allocation holding them (with torch, a block of the
        caching allocator) is registered once through CUDA IPC and every tensor inside it is an
        offset; the session keeps each registered tensor's storage alive until release(), so
        the allocator cannot hand that memory to someone else meanwhile. Host arrays must live
        in epd shared memory (epd.shm_empty / epd.shm_tensor)."""
        described = tensors.describe(array, what)
        registration = self._find(described)
        if registration is None:
            registration = self._register(described, what)
        registration.keep.setdefault(described.owner_key, described.owner)
        return TensorRef(registration.buffer_id, described.ptr - registration.base,
                         described.dtype, described.shape)

    def lookup(self, array):
        """TensorRef of `array` when its memory is registered already, else None."""
        described = tensors.describe(array)
        registration = self._find(described)
        if registration is None:
            return None
        return TensorRef(registration.buffer_id, described.ptr - registration.base,
                         described.dtype, described.shape)

    def release(self, array_or_buffer_id):
        """release(array): lets go of the memory register(array) kept alive; the registration
        ends with the last such array. release(buffer_id): ends that registration at once."""
        described = None
        if isinstance(array_or_buffer_id, int):
            match = lambda r: r.buffer_id == array_or_buffer_id  # noqa: E731
        else:
            described = tensors.describe(array_or_buffer_id)
            match = lambda r: self._holds(r, described)  # noqa: E731
        with self._lock:
            key = next((k for k, r in self._registrations.items() if match(r)), None)
            registration = self._registrations.get(key) if key is not None else None
            if registration is not None and described is not None:
                if registration.keep.pop(described.owner_key, None) is None:
                    registration = None  # this array was never registered itself
                elif registration.keep:
                    return  # other registered arrays still use it
            if registration is not None:
                del self._registrations[key]
        if registration is None:
            raise ValueError(f"{array_or_buffer_id!r} is not registered in session {self.id}")
        lib().release_buffer(self.handle, registration.buffer_id)

    def registrations(self):
        """(buffer id, base, bytes, on device) of every live registration."""
        with self._lock:
            return [(r.buffer_id, r.base, r.size, r.on_device)
                    for r in self._registrations.values()]

    @staticmethod
    def _holds(registration, described):
        return (registration.on_device == described.on_device
                and registration.base <= described.ptr
                and described.ptr + described.nbytes <= registration.base + registration.size)

    def _find(self, described):
        with self._lock:
            for registration in self._registrations.values():
                if self._holds(registration, described):
                    return registration
        return None

    def _register(self, described, what):
        buffer_id = ctypes.c_uint64()
        if described.on_device:
            base, size, device = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_int32()
            lib().device_allocation(ctypes.c_void_p(described.ptr), ctypes.byref(base),
                                    ctypes.byref(size), ctypes.byref(device))
            lib().register_device(self.handle, ctypes.c_void_p(base.value), size.value,
                                  ctypes.byref(buffer_id))
            registration = _Registration(buffer_id.value, base.value, size.value, True,
                                         device.value, {})
            key = ("cuda", device.value, base.value)
        else:
            block = memory.find_block(described.ptr, described.nbytes)
            if block is None:
                raise ValueError(
                    f"{what}: host array at {described.ptr:#x} ({described.nbytes} bytes) is not "
                    "in epd shared memory: allocate it with epd.shm_empty / epd.shm_tensor")
            lib().register_shm(self.handle, block.handle, 0, 0, ctypes.byref(buffer_id))
            registration = _Registration(buffer_id.value, block.ptr, block.size, False, -1, {})
            key = ("shm", block.name)
        with self._lock:
            self._registrations[key] = registration
        return registration

    def as_ref(self, tensor, what="tensor"):
        """`tensor` itself when a TensorRef, else register(tensor)."""
        return tensor if isinstance(tensor, TensorRef) else self.register(tensor, what)

    # ---- fences ----
    def create_fence(self):
        fence = Fence(self)
        self._children.append(fence)
        return fence

    # ---- groups ----
    def create_group(self, name, *, world_size, experts, hidden, max_tokens_per_rank, top_k,
                     dtype="bf16", layout="expert_major", algorithm="low_latency",
                     expert_capacity=0, ranks=None, persistent=False):
        """Creates a group; returns its expert capacity after defaults."""
        config = GroupConfig()
        lib().group_config_init(ctypes.byref(config))
        config.name = name.encode()
        config.world_size = int(world_size)
        if ranks is not None:
            array = (ctypes.c_int32 * len(ranks))(*ranks)
            config.ranks = ctypes.cast(array, ctypes.POINTER(ctypes.c_int32))
            config.num_ranks = len(ranks)
        config.experts, config.hidden = int(experts), int(hidden)
        config.max_tokens_per_rank, config.top_k = int(max_tokens_per_rank), int(top_k)
        config.dtype = tensors.dtype_code(dtype)
        config.layout = _choice(LAYOUTS, layout, "layout")
        config.algorithm = _choice(ALGORITHMS, algorithm, "algorithm")
        config.expert_capacity = int(expert_capacity)
        capacity = ctypes.c_int32()
        lib().group_create(self.handle, ctypes.byref(config), int(bool(persistent)),
                           ctypes.byref(capacity))
        return capacity.value

    def destroy_group(self, name):
        lib().group_destroy(self.handle, name.encode())

    # ---- handles ----
    def create_handle(self, group, name="", *, persistent=False, data_path="default"):
        handle = ctypes.c_void_p()
        lib().handle_create(self.handle, group.encode(), name.encode(), int(bool(persistent)),
                            _choice(DATA_PATHS, data_path, "data_path"), ctypes.byref(handle))
        return self._adopt(Handle(self, handle))

    def attach_handle(self, name, *, data_path="default"):
        handle = ctypes.c_void_p()
        lib().handle_attach(self.handle, name.encode(), _choice(DATA_PATHS, data_path,
                                                                  "data_path"),
                            ctypes.byref(handle))
        return self._adopt(Handle(self, handle))

    def _adopt(self, child):
        self._children.append(child)
        return child

    # ---- ops ----
    @staticmethod
    def options(*, wait=None, signal=None, blocking=None):
        """OpOptions: wait / signal are (Fence, value); blocking defaults to "no fences"."""
        options = OpOptions()
        options.struct_size = ctypes.sizeof(OpOptions)
        if wait is not None:
            options.wait_fence_id, options.wait_value = wait[0].id, int(wait[1])
        if signal is not None:
            options.signal_fence_id, options.signal_value = signal[0].id, int(signal[1])
        options.blocking = int(blocking if blocking is not None else (wait is None
                                                                      and signal is None))
        return options

    def update(self, handle, topk_idx, topk_weights=None, *, wait=None, signal=None,
               blocking=None):
        """Binds routing: topk_idx [n, K] int32/int64, topk_weights [n, K] fp32 or None."""
        idx = self.as_ref(topk_idx, "topk_idx")
        weights = self.as_ref(topk_weights, "topk_weights") if topk_weights is not None else None
        lib().update(self.handle, handle.handle, ctypes.byref(idx.c),
                     ctypes.byref(weights.c) if weights is not None else None,
                     ctypes.byref(self.options(wait=wait, signal=signal, blocking=blocking)))

    def dispatch(self, handle, x, *, wait=None, signal=None, blocking=None):
        ref = self.as_ref(x, "x")
        lib().dispatch(self.handle, handle.handle, ctypes.byref(ref.c),
                       ctypes.byref(self.options(wait=wait, signal=signal, blocking=blocking)))

    def combine(self, handle, out, expert_out=None, *, wait=None, signal=None, blocking=None):
        out_ref = self.as_ref(out, "out")
        expert = self.as_ref(expert_out, "expert_out") if expert_out is not None else None
        lib().combine(self.handle, handle.handle, ctypes.byref(out_ref.c),
                      ctypes.byref(expert.c) if expert is not None else None,
                      ctypes.byref(self.options(wait=wait, signal=signal, blocking=blocking)))


class Fence:
    """A daemon-exported 64-bit counter. Host pages (cpu backend): signal / load / wait.
    Device pages (cuda backend): signal_on_stream / wait_on_stream."""

    def __init__(self, session):
        handle = ctypes.c_void_p()
        lib().fence_create(session.handle, ctypes.byref(handle))
        self.session = session
        self._handle = handle
        self.id = lib().fence_id(handle)
        self.on_device = bool(lib().fence_on_device(handle))

    @property
    def handle(self):
        if not self._handle:
            raise ValueError(f"epd.Fence {self.id} is destroyed")
        return self._handle

    def signal(self, value):
        lib().fence_signal(self.handle, int(value))

    def load(self):
        value = ctypes.c_uint64()
        lib().fence_load(self.handle, ctypes.byref(value))
        return value.value

    def wait(self, value, timeout_ms=None):
        lib().fence_wait(self.handle, int(value), int(self.session.op_timeout_ms
                                                      if timeout_ms is None else timeout_ms))

    def signal_on_stream(self, value, stream):
        lib().fence_signal_on_stream(self.handle, int(value),
                                     ctypes.c_void_p(cuda_stream_pointer(stream)))

    def wait_on_stream(self, value, stream):
        lib().fence_wait_on_stream(self.handle, int(value),
                                   ctypes.c_void_p(cuda_stream_pointer(stream)))

    def destroy(self):
        handle, self._handle = self._handle, None
        if handle:
            lib().fence_destroy(handle)

    def _detach(self):
        # The session is closing: the daemon drops the fence with it.
        self.destroy_quietly()

    def destroy_quietly(self):
        try:
            self.destroy()
        except Exception:  # noqa: BLE001 - the session's end releases it anyway
            pass


class Handle:
    """A handle of the session's rank with its exported region mapped. Receive tensors are
    zero-copy views: numpy arrays on the cpu backend, torch CUDA tensors on the cuda backend
    (`as_torch=True` gives torch CPU tensors on the cpu backend)."""

    _VIEWS = {  # name: (offset field, dtype, shape(info))
        "recv_x": ("recv_x_offset", None, lambda i: (i.recv_rows, i.hidden)),
        "recv_src": ("recv_src_offset", tensors.INT32, lambda i: (i.recv_rows, 3)),
        "recv_weights": ("recv_weights_offset", tensors.FP32, lambda i: (i.recv_rows,)),
        "recv_topk_idx": ("recv_topk_idx_offset", tensors.INT32, lambda i: (i.recv_rows, i.top_k)),
        "recv_topk_weights": ("recv_topk_weights_offset", tensors.FP32,
                              lambda i: (i.recv_rows, i.top_k)),
        "recv_counts": ("recv_counts_offset", tensors.INT32,
                        lambda i: (i.local_experts if i.layout != 2 else i.world_size,)),
        "recv_offsets": ("recv_offsets_offset", tensors.INT32, lambda i: (i.local_experts,)),
    }

    def __init__(self, session, handle):
        self.session = session
        self._handle = handle
        info = HandleInfo()
        lib().handle_info(handle, ctypes.byref(info))
        self.info = info
        self.id = info.handle_id
        self.buffer_id = info.buffer_id
        self.name = info.name.decode()
        self.group = info.group.decode()
        self.group_rank = info.group_rank
        self.on_device = bool(info.on_device)
        # The device as this process numbers it (CUDA_VISIBLE_DEVICES may differ from the
        # daemon's), from the mapped region itself.
        self.device = info.device
        if self.on_device:
            base, size, device = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_int32()
            lib().device_allocation(ctypes.c_void_p(info.region), ctypes.byref(base),
                                    ctypes.byref(size), ctypes.byref(device))
            self.device = device.value
        self.expert_major = info.layout != 2
        self.data_path = {v: k for k, v in DATA_PATHS.items()}.get(info.data_path, "daemon")
        self._views = {}

    @property
    def handle(self):
        if not self._handle:
            raise ValueError(f"epd.Handle {self.id} is closed")
        return self._handle

    def view(self, name, as_torch=None):
        """The receive tensor `name` (see _VIEWS), or None when the layout lacks it."""
        key = (name, as_torch)
        if key in self._views:
            return self._views[key]
        field, dtype, shape = self._VIEWS[name]
        info = self.info
        offset = getattr(info, field)
        if offset == NO_TENSOR:
            return None
        dtype = dtype or info.dtype
        ptr = info.region + offset
        if self.on_device:
            view = tensors.torch_device_view(ptr, dtype, shape(info), self.device, self)
        elif as_torch:
            view = tensors.torch_host_view(ptr, dtype, shape(info), self)
        else:
            view = tensors.numpy_view(ptr, dtype, shape(info), self)
        self._views[key] = view
        return view

    def recv_x_ref(self):
        """recv_x as a TensorRef of the exported buffer (combine's expert_out in place)."""
        info = self.info
        return TensorRef(info.buffer_id, info.recv_x_offset, info.dtype,
                         (info.recv_rows, info.hidden))

    def close(self):
        """Unmaps the region (views must not be used afterwards); the daemon keeps the handle
        until the session ends or destroy()."""
        handle, self._handle = getattr(self, "_handle", None), None
        self._views = {}
        if handle:
            lib().handle_close(handle)

    def destroy(self):
        handle, self._handle = self._handle, None
        self._views = {}
        if handle:
            lib().handle_destroy(handle)

    def _detach(self):
        self.close()
