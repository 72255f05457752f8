"""CTest's runner of Python test modules: fails when a test fails or errors, and when no test
ran at all (an import that finds no tests must not pass silently). Exit 77 (CTest's "skipped")
when every test was skipped, e.g. GPU tests on a machine without a GPU or torch.

    python3 run_tests.py MODULE [MODULE...]
"""

import os
import sys
import unittest

SKIPPED = 77


def main(modules):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    # The package: <bundle>/python/epd beside <bundle>/python/tests, or <repo>/python/epd
    # (an explicit PYTHONPATH comes first either way).
    for root in (os.path.dirname(here), os.path.join(os.path.dirname(os.path.dirname(here)),
                                                     "python")):
        if os.path.isdir(os.path.join(root, "epd")):
            sys.path.append(root)
            break
    suite = unittest.defaultTestLoader.loadTestsFromNames(modules)
    if suite.countTestCases() == 0:
        print(f"run_tests: no tests found in {modules}", file=sys.stderr)
        return 1
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    if not result.wasSuccessful():
        return 1
    ran = result.testsRun - len(result.skipped)
    if ran <= 0 and result.skipped:
        # A skipped module (setUpModule) counts one skip and no run.
        print(f"run_tests: every test skipped: {result.skipped[0][1]}", file=sys.stderr)
        return SKIPPED
    if ran <= 0:
        print("run_tests: no test ran", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
