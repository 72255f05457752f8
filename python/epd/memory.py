"""Shared-memory arrays for the cpu backend.

The cpu backend reads and writes frontend tensors in POSIX shared memory. `shm_empty` (numpy)
and `shm_tensor` (torch CPU) allocate zero-filled arrays in a fresh shared memory object made
by the client library (so registration follows it); Session.register finds the object an
array lives in. The object is unlinked when the last array over it is gone; the daemon keeps
its own mapping of what was registered until it is released.
"""

import ctypes
import threading
import weakref

from . import tensors
from ._lib import lib


class ShmBlock:
    """One shared memory object of this process (epd_shm_t)."""

    def __init__(self, size_bytes):
        if size_bytes <= 0:
            raise ValueError(f"shared memory size {size_bytes} must be positive")
        handle = ctypes.c_void_p()
        lib().shm_create(size_bytes, ctypes.byref(handle))
        self._handle = handle
        self.ptr = lib().shm_data(handle)
        self.size = lib().shm_size(handle)
        self.name = lib().shm_name(handle).decode()
        _live.add(self)

    @property
    def handle(self):
        return self._handle

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle:
            _live.discard(self)
            lib().shm_destroy(handle)
            self._handle = None


class _LiveBlocks:
    """Weak set of live blocks, searchable by address."""

    def __init__(self):
        self._lock = threading.Lock()
        self._blocks = {}

    def add(self, block):
        with self._lock:
            self._blocks[id(block)] = weakref.ref(block)

    def discard(self, block):
        with self._lock:
            self._blocks.pop(id(block), None)

    def find(self, ptr, nbytes):
        with self._lock:
            refs = list(self._blocks.values())
        for ref in refs:
            block = ref()
            if block is not None and block.ptr <= ptr and ptr + nbytes <= block.ptr + block.size:
                return block
        return None


_live = _LiveBlocks()


def find_block(ptr, nbytes):
    """The live ShmBlock holding [ptr, ptr + nbytes), or None."""
    return _live.find(ptr, nbytes)


def _shm_block_for(shape, dtype):
    """(dtype code, shape tuple, a zero-filled ShmBlock big enough for it)."""
    code = tensors.dtype_code(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
    count = 1
    for extent in shape:
        count *= extent
    return code, shape, ShmBlock(max(count * tensors.ELEMENT_BYTES[code], 1))


def shm_empty(shape, dtype="fp32"):
    """A zero-filled numpy array in a new shared memory object (bf16: uint16 bit patterns)."""
    code, shape, block = _shm_block_for(shape, dtype)
    return tensors.numpy_view(block.ptr, code, shape, block)


def shm_tensor(shape, dtype="fp32"):
    """A zero-filled torch CPU tensor in a new shared memory object."""
    code, shape, block = _shm_block_for(shape, dtype)
    return tensors.torch_host_view(block.ptr, code, shape, block)


def shm_like(array):
    """A copy of a numpy array or torch CPU tensor in shared memory."""
    if tensors.is_torch(array):
        copy = shm_tensor(tuple(array.shape), array.dtype)
        copy.copy_(array)
        return copy
    import numpy as np
    source = np.ascontiguousarray(array)
    copy = shm_empty(source.shape, source.dtype)
    copy[...] = source
    return copy
