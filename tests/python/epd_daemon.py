"""Test fixture: a real `epd` daemon on a private unix socket.

The daemon binary is $EPD_DAEMON (CTest sets it to the build's epd), else bin/epd of the
bundle or build/bin/epd of the repository this file lives in."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest


def _default_binary():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))  # <bundle>/python/tests, <repo>/tests/python
    for candidate in (os.path.join(root, "bin", "epd"), os.path.join(root, "build", "bin", "epd")):
        if os.path.exists(candidate):
            return candidate
    return None


class Daemon:
    """backend "cpu" (ranks = cpu ranks) or "cuda" (gpus, e.g. "0")."""

    def __init__(self, ranks=2, extra_args=(), backend="cpu", gpus=None):
        binary = os.environ.get("EPD_DAEMON") or _default_binary()
        if not binary or not os.path.exists(binary):
            raise RuntimeError(f"EPD_DAEMON={binary!r} is not the path of the epd binary")
        self.dir = tempfile.mkdtemp(prefix="epd-python-test-")
        self.socket = os.path.join(self.dir, "epd.sock")
        self.address = "unix://" + self.socket
        self.log_path = os.path.join(self.dir, "epd.log")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [binary, "--backend", backend,
                 *(["--cpu-ranks", str(ranks)] if backend == "cpu" else []),
                 *(["--gpus", gpus] if gpus else []),
                 "--listen", self.address, "--log-level", "info",
                 # No /metrics: daemons of tests running in parallel would share its port.
                 "--metrics-listen", "", *extra_args],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            if self.process.poll() is not None:
                raise RuntimeError(f"epd exited with {self.process.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("epd did not create its socket within 10 s")
            time.sleep(0.01)

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class SessionTestCase(unittest.TestCase):
    """One daemon of RANKS cpu ranks and a client per test class; a session of rank 0 named
    after each test."""

    RANKS = 2

    @classmethod
    def setUpClass(cls):
        import epd
        cls.daemon = Daemon(ranks=cls.RANKS)
        cls.client = epd.Client(cls.daemon.address)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.daemon.stop()

    def setUp(self):
        self.session = self.client.open_session(0, self.id())

    def tearDown(self):
        self.session.close()
