"""Start a forkserver process while the fork server dies as it preloads.

Prints ``raised <ExceptionType>`` and exits 0, so the test can check which
error the parent got from ``start()``.
"""
import os
import sys

import polyproc


def work():
    pass


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.path.dirname(os.path.abspath(__file__))
    ctx = polyproc.get_context("forkserver")
    polyproc.set_forkserver_preload(["_forkserver_preload_exits"])
    p = ctx.Process(target=work)
    try:
        p.start()
    except Exception as error:
        print(f"raised {type(error).__name__}")
        print(error)
    else:
        p.join()
        print(f"started exitcode={p.exitcode}")
