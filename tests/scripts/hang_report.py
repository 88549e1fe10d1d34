"""A program whose pool stalls twice: ``hang_report.py METHOD pool|executor``.

One worker; two calls in a row, each a task that sleeps 0.8 s, with
``hang_report=0.2``: each stall must be reported once (not once per 0.2 s),
and the second again, since a task finished in between.  The calls are
made once the worker is ready (``stacks()`` says so), so that its start-up
is not a stall of its own.
"""
import sys
import time

import polyproc


def stall_for(seconds):
    time.sleep(seconds)  # STALLS HERE
    return seconds


def wait_until_ready(pool_or_executor):
    deadline = time.monotonic() + 30
    while any("the worker is starting" in text for text in pool_or_executor.stacks().values()):
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not start within 30 s")
        time.sleep(0.01)


if __name__ == "__main__":
    method, front = sys.argv[1], sys.argv[2]
    ctx = polyproc.get_context(method)
    if front == "pool":
        with ctx.Pool(1, hang_report=0.2) as pool:
            wait_until_ready(pool)
            pool.apply(stall_for, (0.8,))
            pool.apply(stall_for, (0.8,))
    else:
        with polyproc.Executor(1, mp_context=ctx, hang_report=0.2) as executor:
            wait_until_ready(executor)
            executor.submit(stall_for, 0.8).result()
            executor.submit(stall_for, 0.8).result()
    print("done")
