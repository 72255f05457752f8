"""Fence: a daemon-exported 64-bit counter, signalled and awaited on the host or a stream."""

import ctypes

from ._lib import lib
from .values import cuda_stream_pointer

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
