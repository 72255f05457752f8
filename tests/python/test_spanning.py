"""A group that spans nodes, seen from the epd Python package (C API): its ops exchange with the
other daemons on the daemon's streams, so its handles take that data path by default and
forcing the frontend-launched one says why. The leader of a two-node deployment alone is
enough: nothing here runs an op."""

import os
import socket
import tempfile
import unittest

import epd
from epd_daemon import Daemon


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SpanningGroupTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="epd-python-spanning-")
        token = os.path.join(cls.dir, "token")
        with open(token, "w") as f:
            f.write("python-spanning-test-secret\n")
        os.chmod(token, 0o600)
        config = os.path.join(cls.dir, "epd.toml")
        with open(config, "w") as f:
            f.write('[[group]]\nname = "across"\nranks = [0, 3]\nexperts = 4\nhidden = 64\n'
                    "max_tokens_per_rank = 4\ntop_k = 2\nspans_nodes = true\n")
        cls.daemon = Daemon(ranks=2, extra_args=(
            "--config", config, "--nodes", "2", "--node-rank", "0",
            "--leader", f"127.0.0.1:{free_port()}", "--cluster-address", "127.0.0.1",
            "--cluster-token-file", token))
        cls.client = epd.Client(cls.daemon.address)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.daemon.stop()

    def test_handles_take_the_daemons_streams(self):
        session = self.client.open_session(rank=0)
        with self.assertRaisesRegex(epd.FailedPreconditionError, "spans nodes"):
            session.create_handle("across", data_path="frontend")
        self.assertEqual(session.create_handle("across").data_path, "daemon")
        session.close()


if __name__ == "__main__":
    unittest.main()
