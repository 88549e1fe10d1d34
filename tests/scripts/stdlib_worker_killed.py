"""An unmodified stdlib program whose task kills its own worker (SIGKILL).

``stdlib_worker_killed.py METHOD``.  With the stdlib, the Executor's futures
all fail with BrokenProcessPool and ``Pool.map`` waits forever (gh-66587);
under ``python -m polyproc run`` only task 3 fails, with WorkerLostError,
and ``Pool.map`` raises it (uncaught here: a traceback and exit status 1).
"""
import concurrent.futures
import multiprocessing
import os
import signal
import sys


def task(x):
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def main(method):
    multiprocessing.set_start_method(method)
    with concurrent.futures.ProcessPoolExecutor(2) as executor:
        futures = [executor.submit(task, i) for i in range(6)]
        for i, future in enumerate(futures):
            try:
                print(f"executor {i}: {future.result(timeout=60)}", flush=True)
            except Exception as error:
                print(f"executor {i}: {type(error).__name__}", flush=True)
    with multiprocessing.Pool(2) as pool:
        print("pool:", pool.map(task, range(8)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
