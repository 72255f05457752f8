"""epd: Python frontend of the epd daemon (MoE dispatch/combine as a node service).

Pure Python over libepd_c.so (ctypes); works with or without torch and numpy:

    import epd
    client = epd.Client("unix:///run/epd/epd.sock")
    session = client.open_session(rank=0)
    handle = session.attach_handle("layer0")          # or create_group + create_handle
    buf = epd.Buffer(session, handle)
    recv = buf.dispatch(x, topk_idx, topk_weights)    # fenced on torch's current stream
    ...                                               # experts on recv.recv_x, in place
    out = buf.combine()

Errors raise epd.EpdError subclasses carrying .code (gRPC canonical code), .code_name and
.message (the daemon's message).
"""

from .client import Client
from .fence import Fence
from .handle import Handle
from .session import Session
from .values import TensorRef
from . import errors
from .errors import *  # noqa: F401,F403 - the EpdError hierarchy
from .errors import EpdError, error_for
from .layer import Buffer, DispatchResult
from .memory import ShmBlock, shm_empty, shm_like, shm_tensor
from .tensors import BF16, FP8_E4M3, FP16, FP32, INT32, INT64, UINT8, dtype_code

__version__ = "0.1.0"

__all__ = [  # with the EpdError subclasses of epd.errors
    "Client", "Session", "Fence", "Handle", "TensorRef", "Buffer", "DispatchResult", "EpdError",
    "error_for", "reference", "ShmBlock", "shm_empty", "shm_like", "shm_tensor", "BF16", "FP16",
    "FP32", "INT32", "INT64", "FP8_E4M3", "UINT8", "dtype_code"] + [
        name for name in dir(errors) if name.endswith("Error")]


def __getattr__(name):
    # epd.reference is the numpy oracle: imported on first use, so `import epd` works on a
    # Python without numpy (torch-only frontends, the C API's users).
    if name == "reference":
        import importlib

        return importlib.import_module(".reference", __name__)
    raise AttributeError(f"module 'epd' has no attribute {name!r}")
