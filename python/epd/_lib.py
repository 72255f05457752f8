"""ctypes bindings of libepd_c.so (client/c_api/epd_c.h); private to the package.

The library is found, in order, at $EPD_C_LIBRARY, next to the package in a bundle
(<bundle>/python/epd -> <bundle>/lib), in a build tree of the repository (<repo>/build/lib),
then on the loader's search path.
"""

import ctypes
import os
import threading

from .errors import raise_for_status

C_API_VERSION = 1

c_u32 = ctypes.c_uint32
c_i32 = ctypes.c_int32
c_u64 = ctypes.c_uint64
c_i64 = ctypes.c_int64
c_vp = ctypes.c_void_p
c_char_p = ctypes.c_char_p
P = ctypes.POINTER

MAX_DIMS = 4
NO_TENSOR = 2**64 - 1
OP_UPDATE, OP_DISPATCH, OP_COMBINE = 1, 2, 3


class ClientOptions(ctypes.Structure):
    _fields_ = [("struct_size", c_u32), ("connect_timeout_ms", c_i64), ("rpc_timeout_ms", c_i64),
                ("op_timeout_ms", c_i64), ("close_timeout_ms", c_i64)]


class NodeInfo(ctypes.Structure):
    _fields_ = [("struct_size", c_u32), ("daemon_version", ctypes.c_char * 64),
                ("backend", ctypes.c_char * 16), ("ranks", c_i32), ("gpus", c_i32),
                ("nccl_version", ctypes.c_char * 32), ("groups", c_i32),
                ("default_data_path", c_i32)]


class Stats(ctypes.Structure):
    _fields_ = [("struct_size", c_u32), ("sessions_open", c_u64), ("sessions_total", c_u64),
                ("allocations", c_u64), ("frees", c_u64), ("live_bytes", c_i64),
                ("update_completed", c_u64), ("update_failed", c_u64),
                ("dispatch_completed", c_u64), ("dispatch_failed", c_u64),
                ("combine_completed", c_u64), ("combine_failed", c_u64)]


class GroupConfig(ctypes.Structure):
    _fields_ = [("struct_size", c_u32), ("name", c_char_p), ("world_size", c_i32),
                ("ranks", P(c_i32)), ("num_ranks", c_i32), ("experts", c_i32), ("hidden", c_i32),
                ("max_tokens_per_rank", c_i32), ("top_k", c_i32), ("dtype", c_i32),
                ("algorithm", c_i32), ("layout", c_i32), ("expert_capacity", c_i32),
                ("dispatch_dtype", c_i32), ("scale_format", c_i32),
                ("recv_capacity", c_i32), ("sm_budget", c_i32), ("spans_nodes", c_i32)]


class HandleInfo(ctypes.Structure):
    _fields_ = [("struct_size", c_u32), ("handle_id", c_u64), ("buffer_id", c_u64),
                ("name", c_char_p), ("group", c_char_p), ("group_rank", c_i32),
                ("persistent", c_i32), ("data_path", c_i32), ("world_size", c_i32),
                ("experts", c_i32), ("local_experts", c_i32), ("hidden", c_i32),
                ("max_tokens_per_rank", c_i32), ("top_k", c_i32), ("dtype", c_i32),
                ("algorithm", c_i32), ("layout", c_i32), ("expert_capacity", c_i32),
                ("region", c_vp), ("region_bytes", c_u64), ("on_device", c_i32),
                ("device", c_i32), ("recv_rows", c_u64), ("recv_x_offset", c_u64),
                ("recv_src_offset", c_u64), ("recv_weights_offset", c_u64),
                ("recv_topk_idx_offset", c_u64), ("recv_topk_weights_offset", c_u64),
                ("recv_counts_offset", c_u64), ("recv_offsets_offset", c_u64),
                ("dispatch_dtype", c_i32), ("scale_format", c_i32),
                ("recv_scales_offset", c_u64), ("recv_rank_counts_offset", c_u64),
                ("recv_rank_offsets_offset", c_u64), ("expert_rows_offset", c_u64),
                ("expert_rows_entries", c_u64), ("held_bytes", c_u64)]


class TensorRefC(ctypes.Structure):
    _fields_ = [("buffer_id", c_u64), ("offset_bytes", c_u64), ("dtype", c_i32), ("ndim", c_i32),
                ("shape", c_i64 * MAX_DIMS)]


class OpOptions(ctypes.Structure):
    _fields_ = [("struct_size", c_u32), ("wait_fence_id", c_u64), ("wait_value", c_u64),
                ("signal_fence_id", c_u64), ("signal_value", c_u64), ("blocking", c_i32)]


# name: (restype, argtypes). Functions returning epd_status_t are checked (see _checked).
_STATUS = "status"  # epd_status_t: an int32 that raises when not 0
_SIGNATURES = {
    "epd_c_api_version": (c_i32, []),
    "epd_last_error_message": (c_char_p, []),
    "epd_last_error_code": (c_i32, []),
    "epd_status_name": (c_char_p, [c_i32]),
    "epd_client_options_init": (None, [P(ClientOptions)]),
    "epd_client_connect": (_STATUS, [c_char_p, P(ClientOptions), P(c_vp)]),
    "epd_client_destroy": (None, [c_vp]),
    "epd_client_node_info": (_STATUS, [c_vp, P(NodeInfo)]),
    "epd_client_stats": (_STATUS, [c_vp, P(Stats)]),
    "epd_session_open": (_STATUS, [c_vp, c_i32, c_char_p, P(c_vp)]),
    "epd_session_id": (c_u64, [c_vp]),
    "epd_session_rank": (c_i32, [c_vp]),
    "epd_session_close": (_STATUS, [c_vp]),
    "epd_session_destroy": (None, [c_vp]),
    "epd_session_poll": (_STATUS, [c_vp]),
    "epd_session_sync": (_STATUS, [c_vp, c_i64]),
    "epd_shm_create": (_STATUS, [ctypes.c_size_t, P(c_vp)]),
    "epd_shm_data": (c_vp, [c_vp]),
    "epd_shm_size": (ctypes.c_size_t, [c_vp]),
    "epd_shm_name": (c_char_p, [c_vp]),
    "epd_shm_destroy": (None, [c_vp]),
    "epd_register_shm": (_STATUS, [c_vp, c_vp, c_u64, c_u64, P(c_u64)]),
    "epd_device_allocation": (_STATUS, [c_vp, P(c_u64), P(c_u64), P(c_i32)]),
    "epd_register_device": (_STATUS, [c_vp, c_vp, c_u64, P(c_u64)]),
    "epd_release_buffer": (_STATUS, [c_vp, c_u64]),
    "epd_fence_create": (_STATUS, [c_vp, P(c_vp)]),
    "epd_fence_id": (c_u64, [c_vp]),
    "epd_fence_on_device": (c_i32, [c_vp]),
    "epd_fence_counter": (c_vp, [c_vp]),
    "epd_fence_signal": (_STATUS, [c_vp, c_u64]),
    "epd_fence_load": (_STATUS, [c_vp, P(c_u64)]),
    "epd_fence_wait": (_STATUS, [c_vp, c_u64, c_i64]),
    "epd_fence_signal_on_stream": (_STATUS, [c_vp, c_u64, c_vp]),
    "epd_fence_wait_on_stream": (_STATUS, [c_vp, c_u64, c_vp]),
    "epd_fence_destroy": (_STATUS, [c_vp]),
    "epd_group_config_init": (None, [P(GroupConfig)]),
    "epd_group_create": (_STATUS, [c_vp, P(GroupConfig), c_i32, P(c_i32)]),
    "epd_group_destroy": (_STATUS, [c_vp, c_char_p]),
    "epd_handle_create": (_STATUS, [c_vp, c_char_p, c_char_p, c_i32, c_i32, P(c_vp)]),
    "epd_handle_attach": (_STATUS, [c_vp, c_char_p, c_i32, P(c_vp)]),
    "epd_handle_info": (_STATUS, [c_vp, P(HandleInfo)]),
    "epd_handle_close": (None, [c_vp]),
    "epd_handle_destroy": (_STATUS, [c_vp]),
    "epd_op_options_init": (None, [P(OpOptions)]),
    "epd_update": (_STATUS, [c_vp, c_vp, P(TensorRefC), P(TensorRefC), P(OpOptions)]),
    "epd_dispatch": (_STATUS, [c_vp, c_vp, P(TensorRefC), P(OpOptions)]),
    "epd_dispatch_prequantized": (_STATUS, [c_vp, c_vp, P(TensorRefC), P(TensorRefC),
                                  P(OpOptions)]),
    "epd_combine": (_STATUS, [c_vp, c_vp, P(TensorRefC), P(TensorRefC), P(OpOptions)]),
    "epd_stream_op_create": (_STATUS, [c_vp, c_vp, c_i32, P(TensorRefC), P(TensorRefC), c_vp,
                                       c_vp, P(c_vp)]),
    "epd_stream_op_enqueue": (_STATUS, [c_vp, c_vp]),
    "epd_stream_op_posts": (c_u64, [c_vp]),
    "epd_stream_op_destroy": (None, [c_vp]),
    "epd_handle_update": (_STATUS, [c_vp, c_vp, c_i32, c_vp, c_i32, c_vp]),
    "epd_handle_dispatch": (_STATUS, [c_vp, c_vp, c_vp]),
    "epd_handle_combine": (_STATUS, [c_vp, c_vp, c_vp, c_vp]),
    "epd_handle_take_errors": (_STATUS, [c_vp]),
}


def _candidates():
    explicit = os.environ.get("EPD_C_LIBRARY")
    if explicit:
        yield explicit
        return
    package = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(package))
    yield os.path.join(root, "lib", "libepd_c.so")           # bundle: <out>/python/epd
    yield os.path.join(root, "build", "lib", "libepd_c.so")  # repository: <repo>/python/epd
    yield "libepd_c.so"                                      # the loader's search path


class _Library:
    """The loaded library: each C function as an attribute; status-returning ones raise."""

    def __init__(self):
        errors = []
        for path in _candidates():
            if os.sep in path and not os.path.exists(path):
                errors.append(f"{path}: no such file")
                continue
            try:
                self._dll = ctypes.CDLL(path)
                self.path = path
                break
            except OSError as e:
                errors.append(f"{path}: {e}")
        else:
            raise ImportError("epd: cannot load libepd_c.so (set EPD_C_LIBRARY to its path): "
                              + "; ".join(errors))
        for name, (restype, argtypes) in _SIGNATURES.items():
            function = getattr(self._dll, name)
            function.restype = c_i32 if restype is _STATUS else restype
            function.argtypes = argtypes
            setattr(self, name[4:], self._checked(function) if restype is _STATUS else function)
        version = self.c_api_version()
        if version != C_API_VERSION:
            raise ImportError(f"epd: {self.path} has C API version {version}, this package "
                              f"needs {C_API_VERSION}")

    def _checked(self, function):
        dll = self._dll

        def call(*args):
            code = function(*args)
            if code != 0:
                raise_for_status(code, dll.epd_last_error_message().decode(errors="replace"))
        call.__name__ = function.__name__
        return call


_lock = threading.Lock()
_instance = None


def lib():
    """The library, loaded on first use (importing the package needs no library)."""
    global _instance
    if _instance is None:
        with _lock:
            if _instance is None:
                _instance = _Library()
    return _instance
