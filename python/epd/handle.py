"""Handle: a handle of the session's rank with its exported region mapped, and zero-copy views
of its receive tensors."""

import ctypes

from . import tensors
from ._lib import NO_TENSOR, HandleInfo, lib
from .values import DATA_PATHS, TensorRef

class Handle:
    """A handle of the session's rank with its exported region mapped. Receive tensors are
    zero-copy views: numpy arrays on the cpu backend, torch CUDA tensors on the cuda backend
    (`as_torch=True` gives torch CPU tensors on the cpu backend)."""

    # name: (offset field, dtype(info), shape(info)). With fp8 dispatch recv_x holds e4m3
    # bytes and recv_scales one scale per 128 channels: fp32, or ue8m0 exponent bytes (uint8);
    # numpy and torch see e4m3 as uint8 (common/fp8.h states the encoding).
    _VIEWS = {
        "recv_x": ("recv_x_offset", lambda i: i.dispatch_dtype or i.dtype,
                   lambda i: (i.recv_rows, i.hidden)),
        "recv_scales": ("recv_scales_offset",
                        lambda i: tensors.UINT8 if i.scale_format == 2 else tensors.FP32,
                        lambda i: (i.recv_rows, i.hidden // 128)),
        "recv_src": ("recv_src_offset", lambda i: tensors.INT32,
                     lambda i: (i.recv_rows, 2 if i.algorithm == 2 else 3)),
        "recv_weights": ("recv_weights_offset", lambda i: tensors.FP32, lambda i: (i.recv_rows,)),
        "recv_topk_idx": ("recv_topk_idx_offset", lambda i: tensors.INT32,
                          lambda i: (i.recv_rows, i.top_k)),
        "recv_topk_weights": ("recv_topk_weights_offset", lambda i: tensors.FP32,
                              lambda i: (i.recv_rows, i.top_k)),
        "recv_counts": ("recv_counts_offset", lambda i: tensors.INT32,
                        lambda i: (i.local_experts if i.layout != 2 else i.world_size,)),
        "recv_offsets": ("recv_offsets_offset", lambda i: tensors.INT32,
                         lambda i: (i.local_experts + (1 if i.algorithm == 2 else 0),)),
        # High-throughput only: rows per source rank and the per-local-expert gather list.
        "recv_rank_counts": ("recv_rank_counts_offset", lambda i: tensors.INT32,
                             lambda i: (i.world_size,)),
        "recv_rank_offsets": ("recv_rank_offsets_offset", lambda i: tensors.INT32,
                              lambda i: (i.world_size,)),
        "expert_rows": ("expert_rows_offset", lambda i: tensors.INT32,
                        lambda i: (i.expert_rows_entries,)),
    }

    def __init__(self, session, handle):
        self.session = session
        self._handle = handle
        info = HandleInfo()
        info.struct_size = ctypes.sizeof(HandleInfo)
        lib().handle_info(handle, ctypes.byref(info))
        self.info = info
        self.id = info.handle_id
        self.buffer_id = info.buffer_id
        self.name = info.name.decode()
        self.group = info.group.decode()
        self.group_rank = info.group_rank
        # Bytes the daemon holds for this handle (receive region, bound routing, and a
        # spanning group's exchange buffers on the cuda backend).
        self.held_bytes = info.held_bytes
        self.on_device = bool(info.on_device)
        # The device as this process numbers it (CUDA_VISIBLE_DEVICES may differ from the
        # daemon's), from the mapped region itself.
        self.device = info.device
        if self.on_device:
            base, size, device = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_int32()
            lib().device_allocation(ctypes.c_void_p(info.region), ctypes.byref(base),
                                    ctypes.byref(size), ctypes.byref(device))
            self.device = device.value
        # The low-latency expert-major layout (high-throughput groups have their packed one).
        self.high_throughput = info.algorithm == 2
        self.expert_major = info.layout != 2 and not self.high_throughput
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
        dtype = dtype(info)
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

    def take_errors(self):
        """Frontend-launched handles: raises the first device error (bad expert id, capacity
        overflow, peer timeout) of the ops launched since the last call; call once the stream
        passed them. Does nothing on the daemon's streams (their errors come with the ops)."""
        lib().handle_take_errors(self.handle)

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
