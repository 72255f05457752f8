"""Client: a connection to the daemon (node info, stats, sessions).

Every failure raises an EpdError subclass carrying the gRPC code and the daemon's message.
"""

import ctypes
from dataclasses import dataclass

from ._lib import ClientOptions, NodeInfo, Stats, lib
from .session import Session
from .values import DATA_PATHS

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
