"""Block in Pool.map (or imap, or get); the test sends SIGINT once a task says it started.

``pool_sigint.py METHOD [map|imap|get] [reuse]``: with ``reuse`` the script
catches the KeyboardInterrupt and uses the pool again, as a notebook user
does after interrupting a cell, printing the results and the pids of the
workers then.
"""
import os
import signal
import sys
import time

import polyproc


def sleepy(x):
    sys.stdout.write(f"task started {os.getpid()}\n")  # one write: workers share the pipe
    sys.stdout.flush()
    time.sleep(30)
    return x


def square(x):
    return x * x


if __name__ == "__main__":
    # Ctrl-C must raise KeyboardInterrupt even when the test run was started
    # with SIGINT ignored (a shell's background job passes that on).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pool = polyproc.get_context(sys.argv[1]).Pool(2)
    print(" ".join(str(p.pid) for p in pool._pool), flush=True)
    wait_in = sys.argv[2] if len(sys.argv) > 2 else "map"
    reuse = sys.argv[3:] == ["reuse"]
    try:
        if wait_in == "map":
            pool.map(sleepy, range(4))
        elif wait_in == "imap":
            list(pool.imap(sleepy, iter(range(4))))
        else:
            pool.apply_async(sleepy, (0,)).get()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        if not reuse:
            raise
    print(pool.map(square, range(10)), flush=True)
    print(pool.map_async(square, range(5)).get(timeout=20), flush=True)
    print(pool.apply_async(square, (7,)).get(timeout=20), flush=True)
    print(" ".join(str(p.pid) for p in pool._pool), flush=True)
    pool.terminate()
    pool.join()
