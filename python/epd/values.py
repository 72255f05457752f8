"""Small value types shared by the modules: TensorRef, option tables, CUDA stream pointers."""

import ctypes

from . import tensors
from ._lib import MAX_DIMS, TensorRefC

LAYOUTS = {"default": 0, "expert_major": 1, "rank_major": 2}
ALGORITHMS = {"default": 0, "low_latency": 1, "high_throughput": 2, "auto": 3}
SCALE_FORMATS = {"fp32": 1, "ue8m0": 2}
# "default": EPD_DATA_PATH when set, else what the daemon's node info implies (frontend-launched
# on the cuda backend without MPS, the daemon's streams otherwise); see epd_c.h.
DATA_PATHS = {"default": 0, "daemon": 1, "frontend": 2}


def choice(table, value, what):
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
