"""A script that starts a process at import time, without the main guard.

Run as ``POLYPROC_TEST_METHOD=spawn python no_main_guard.py``.  Under spawn and forkserver the
child (or fork server) imports this module again and would start processes
recursively; polyproc must stop that with one clear message.
"""
import os

import polyproc


def work():
    pass


ctx = polyproc.get_context(os.environ["POLYPROC_TEST_METHOD"])
p = ctx.Process(target=work)
p.start()
p.join()
print(f"parent done exitcode={p.exitcode}")
