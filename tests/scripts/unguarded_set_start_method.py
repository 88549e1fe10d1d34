"""Calls set_start_method() at import time; starts its process under the guard.

Run as ``POLYPROC_TEST_METHOD=spawn python unguarded_set_start_method.py``.
Each spawn/forkserver child imports this module again, where the stdlib
raises "context has already been set"; polyproc says what to fix instead.
"""
import os

import polyproc

polyproc.set_start_method(os.environ["POLYPROC_TEST_METHOD"])


def work():
    pass


if __name__ == "__main__":
    p = polyproc.Process(target=work)
    p.start()
    p.join()
    print(f"parent done exitcode={p.exitcode}")
