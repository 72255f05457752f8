"""Session: one frontend's session bound to a node rank; memory registration (with its cache),
fences, groups, handles and ops."""

import ctypes
import threading

from . import memory, tensors
from ._lib import GroupConfig, OpOptions, lib
from .fence import Fence
from .handle import Handle
from .values import ALGORITHMS, DATA_PATHS, LAYOUTS, SCALE_FORMATS, TensorRef, choice

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
                     expert_capacity=0, ranks=None, persistent=False, dispatch_dtype=None,
                     scale_format="fp32", recv_capacity=0, sm_budget=0, spans_nodes=False):
        """Creates a group; returns its expert capacity after defaults (a high-throughput
        group's receive rows per rank). dispatch_dtype "fp8_e4m3" (bf16 groups, hidden a
        multiple of 128) makes dispatch deliver e4m3 rows with one scale per 128 channels in
        scale_format ("fp32" or "ue8m0"). recv_capacity and sm_budget (high-throughput only,
        0 = the daemon's default: R * T rows, 24 SMs) bound its receive rows and SMs.
        spans_nodes: the group spans the daemons of a multi-node deployment and `ranks` are
        global ranks (node * ranks per node + local index)."""
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
        config.layout = choice(LAYOUTS, layout, "layout")
        config.algorithm = choice(ALGORITHMS, algorithm, "algorithm")
        config.expert_capacity = int(expert_capacity)
        config.recv_capacity, config.sm_budget = int(recv_capacity), int(sm_budget)
        config.spans_nodes = int(bool(spans_nodes))
        if dispatch_dtype is not None:
            config.dispatch_dtype = tensors.dtype_code(dispatch_dtype)
            config.scale_format = choice(SCALE_FORMATS, scale_format, "scale_format")
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
                            choice(DATA_PATHS, data_path, "data_path"), ctypes.byref(handle))
        return self._adopt(Handle(self, handle))

    def attach_handle(self, name, *, data_path="default"):
        handle = ctypes.c_void_p()
        lib().handle_attach(self.handle, name.encode(), choice(DATA_PATHS, data_path,
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

    def dispatch(self, handle, x, x_scales=None, *, wait=None, signal=None, blocking=None):
        """x [n, H] in the group's dtype (fp8 groups: bf16 that the daemon quantizes), or with
        x_scales pre-quantized fp8: x [n, H] e4m3 bytes (uint8 arrays are taken as e4m3) and
        x_scales [n, H / 128] in the group's scale format (fp32, or uint8 ue8m0 bytes)."""
        options = ctypes.byref(self.options(wait=wait, signal=signal, blocking=blocking))
        if x_scales is None:
            ref = self.as_ref(x, "x")
            lib().dispatch(self.handle, handle.handle, ctypes.byref(ref.c), options)
            return
        ref = self.as_ref(x, "x")
        if ref.dtype == tensors.UINT8:  # numpy has no e4m3: bytes stand in
            ref = TensorRef(ref.buffer_id, ref.offset_bytes, tensors.FP8_E4M3, ref.shape)
        scales = self.as_ref(x_scales, "x_scales")
        lib().dispatch_prequantized(self.handle, handle.handle, ctypes.byref(ref.c),
                                    ctypes.byref(scales.c), options)

    def combine(self, handle, out, expert_out=None, *, wait=None, signal=None, blocking=None):
        out_ref = self.as_ref(out, "out")
        expert = self.as_ref(expert_out, "expert_out") if expert_out is not None else None
        lib().combine(self.handle, handle.handle, ctypes.byref(out_ref.c),
                      ctypes.byref(expert.c) if expert is not None else None,
                      ctypes.byref(self.options(wait=wait, signal=signal, blocking=blocking)))
