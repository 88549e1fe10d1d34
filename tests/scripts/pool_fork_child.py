"""A bare os.fork() child that uses, cleans up and drops its parent's Pool and
Executor, then exits through the interpreter's normal exit (atexit hooks
included); the parent checks that its workers are still the same and work.

Prints "child: <error of the Pool call> <error of the Executor call>" from
the child, then "parent: workers unchanged ok".
"""
import gc
import os
import sys
import warnings

import polyproc


def square(x):
    return x * x


def error_name(call):
    try:
        call()
    except Exception as exc:  # report whatever it was
        return type(exc).__name__
    return "no error"


if __name__ == "__main__":
    ctx = polyproc.get_context(sys.argv[1])
    pool = ctx.Pool(2)
    ex = ctx.Executor(1)
    assert pool.map(square, range(4)) == [0, 1, 4, 9]
    assert ex.submit(square, 3).result(timeout=20) == 9
    workers = sorted(p.pid for p in pool._pool) + sorted(ex._processes)
    # Forking on purpose while the pools' scheduler threads run (a child
    # inheriting a pool): Python 3.12+ warns about this fork, the script's.
    warnings.filterwarnings("ignore", r"This process .*is multi-threaded",
                            DeprecationWarning)
    child = os.fork()
    if child == 0:
        print("child:", error_name(lambda: pool.apply_async(square, (2,))),
              error_name(lambda: ex.submit(square, 2)), flush=True)
        pool.close()
        pool.join()
        pool.terminate()
        ex.shutdown(wait=True)
        del pool, ex
        gc.collect()
        sys.exit(0)  # the normal exit: multiprocessing's atexit hook runs
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    now = sorted(p.pid for p in pool._pool) + sorted(ex._processes)
    assert now == workers, (workers, now)
    assert pool.map(square, range(4)) == [0, 1, 4, 9]
    assert ex.submit(square, 4).result(timeout=20) == 16
    print("parent: workers unchanged ok", flush=True)
    pool.terminate()
    pool.join()
    ex.shutdown()
