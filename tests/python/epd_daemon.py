"""Test fixture: a real `epd` daemon (cpu backend) on a private unix socket.

The daemon binary is $EPD_DAEMON (CTest sets it to the build's epd)."""

import os
import shutil
import signal
import subprocess
import tempfile
import time


class Daemon:
    def __init__(self, ranks=2, extra_args=()):
        binary = os.environ.get("EPD_DAEMON")
        if not binary or not os.path.exists(binary):
            raise RuntimeError(f"EPD_DAEMON={binary!r} is not the path of the epd binary")
        self.dir = tempfile.mkdtemp(prefix="epd-python-test-")
        self.socket = os.path.join(self.dir, "epd.sock")
        self.address = "unix://" + self.socket
        self.log_path = os.path.join(self.dir, "epd.log")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [binary, "--backend", "cpu", "--cpu-ranks", str(ranks), "--listen", self.address,
                 "--log-level", "info", *extra_args],
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
