"""run_tests.py itself: a failing test, a module without tests and an import error must fail
CTest; a module skipped as a whole reports CTest's skip code."""

import os
import subprocess
import sys
import tempfile
import unittest

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_tests.py")

MODULES = {
    "passing_mod": "import unittest\nclass A(unittest.TestCase):\n    def test_a(self): pass\n",
    "failing_mod": "import unittest\nclass A(unittest.TestCase):\n"
                   "    def test_a(self): self.assertEqual(1, 2)\n",
    "erroring_mod": "import unittest\nclass A(unittest.TestCase):\n"
                    "    def test_a(self): raise RuntimeError('boom')\n",
    "empty_mod": "import unittest\n",
    "broken_mod": "import no_such_module_anywhere\n",
    "skipped_mod": "import unittest\ndef setUpModule(): raise unittest.SkipTest('no gpu')\n"
                   "class A(unittest.TestCase):\n    def test_a(self): pass\n",
}


class RunnerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        for name, text in MODULES.items():
            with open(os.path.join(cls.dir.name, name + ".py"), "w") as f:
                f.write(text)

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def exit_code(self, module):
        env = dict(os.environ, PYTHONPATH=self.dir.name)
        return subprocess.run([sys.executable, RUNNER, module], env=env, capture_output=True,
                              timeout=60).returncode

    def test_exit_codes(self):
        self.assertEqual(self.exit_code("passing_mod"), 0)
        self.assertEqual(self.exit_code("failing_mod"), 1)
        self.assertEqual(self.exit_code("erroring_mod"), 1)
        self.assertEqual(self.exit_code("empty_mod"), 1)
        self.assertEqual(self.exit_code("broken_mod"), 1)
        self.assertEqual(self.exit_code("skipped_mod"), 77)


if __name__ == "__main__":
    unittest.main()
