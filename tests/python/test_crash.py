"""A rank process killed mid-layer: its peer's collective fails within the daemon's op timeout
(UNAVAILABLE when the op was pending at the kill, DEADLINE_EXCEEDED when it was posted after)
as an exception from the fenced op, whose fence the client releases so nothing hangs; the
daemon frees the dead rank's session and the survivor's session keeps working."""

import os
import subprocess
import sys
import time
import unittest

import numpy as np

import epd
from epd_daemon import Daemon

H, T, K = 16, 4, 2
OP_TIMEOUT_MS = 2000

# Rank 1: joins the group, binds routing, says "ready", then sleeps until killed.
CHILD = """
import sys, time, numpy as np, epd
session = epd.Client(sys.argv[1]).open_session(1, "doomed")
buf = epd.Buffer(session, session.create_handle("crash"))
buf.session.update(buf.handle, epd.shm_like(np.array([[0, 1]], np.int32)))
print("ready", flush=True)
time.sleep(600)
"""


class CrashTest(unittest.TestCase):
    def setUp(self):
        self.daemon = Daemon(ranks=2, extra_args=["--op-timeout-ms", str(OP_TIMEOUT_MS)])
        self.client = epd.Client(self.daemon.address)

    def tearDown(self):
        self.client.close()
        self.daemon.stop()

    def wait_for(self, condition, what, timeout_s=10):
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                self.fail(f"{what} within {timeout_s} s")
            time.sleep(0.01)

    def test_killed_peer_fails_pending_op_with_unavailable(self):
        session = self.client.open_session(0, "survivor")
        session.create_group("crash", world_size=2, experts=2, hidden=H, max_tokens_per_rank=T,
                             top_k=K, dtype="fp32")
        buf = epd.Buffer(session, session.create_handle("crash"))
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(epd.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root,
                                                          env.get("PYTHONPATH")]))
        child = subprocess.Popen([sys.executable, "-c", CHILD, self.daemon.address],
                                 stdout=subprocess.PIPE, env=env)
        try:
            self.assertEqual(child.stdout.readline().strip(), b"ready", "child did not start")
            self.wait_for(lambda: self.client.stats().sessions_open == 2, "child session open")
            # Post the collective (fenced: returns at once), then kill rank 1.
            x = epd.shm_like(np.ones((1, H), np.float32))
            idx = epd.shm_like(np.array([[0, 1]], np.int32))
            done = session.create_fence()
            started = time.monotonic()
            session.update(buf.handle, idx, blocking=True)
            session.dispatch(buf.handle, x, signal=(done, 1))
            child.kill()
            child.wait(10)
            # The fenced dispatch was accepted once enqueued; the dead rank's session ending
            # aborts it on the stream, which then writes the signal in order.
            done.wait(1, timeout_ms=3 * OP_TIMEOUT_MS)
            session.sync()
            # The next op on the handle reports why the dispatch failed, naming the dead rank.
            out = epd.shm_like(np.zeros((1, H), np.float32))
            with self.assertRaises((epd.FailedPreconditionError, epd.UnavailableError,
                                    epd.DeadlineExceededError)) as caught:
                session.combine(buf.handle, out, blocking=True)
            self.assertLess(time.monotonic() - started, 2 * OP_TIMEOUT_MS / 1000)
            self.assertRegex(caught.exception.message, r"ranks? \[?1")  # names the dead rank
            self.wait_for(lambda: self.client.stats().sessions_open == 1, "dead session freed")
            # The survivor's session still works.
            session.create_group("after", world_size=1, experts=2, hidden=H,
                                 max_tokens_per_rank=T, top_k=K, dtype="fp32")
            alone = epd.Buffer(session, session.create_handle("after"))
            out = alone.dispatch(x, np.array([[0, -1]], np.int64))
            self.assertEqual(int(out.recv_counts[0]), 1)
            alone.close()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            buf.close()
            session.close()


if __name__ == "__main__":
    unittest.main()
