"""Block in Pool.map (or imap, or get); the test sends SIGINT once a task says it started.

``pool_sigint.py METHOD [map|imap|get] [reuse]``: with ``reuse`` the script
also says "parent waiting" once its main thread is blocked in the pool's
wait (so that the test's Ctrl-C lands there, as a user's does, not on the
way in), then catches the KeyboardInterrupt and uses the pool again, as a
notebook user does after interrupting a cell, printing the results.
"""
import os
import signal
import sys
import threading
import time

import polyproc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _pool_helpers  # (tests/, for the reuse mode)


def sleepy(x):
    sys.stdout.write(f"task started {os.getpid()}\n")  # one write: workers share the pipe
    sys.stdout.flush()
    time.sleep(30)
    return x


def square(x):
    return x * x


def say(*parts) -> None:
    """One line to stdout in one write(), never interleaved with the workers'."""
    os.write(1, (" ".join(str(p) for p in parts) + "\n").encode())


def say_when_waiting() -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _pool_helpers.main_thread_blocked_in("_pool/results.py"):
            say("parent waiting")
            return
        time.sleep(0.005)


if __name__ == "__main__":
    # Ctrl-C must raise KeyboardInterrupt even when the test run was started
    # with SIGINT ignored (a shell's background job passes that on).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pool = polyproc.get_context(sys.argv[1]).Pool(2)
    print(" ".join(str(p.pid) for p in pool._pool), flush=True)
    wait_in = sys.argv[2] if len(sys.argv) > 2 else "map"
    reuse = sys.argv[3:] == ["reuse"]
    if reuse:
        threading.Thread(target=say_when_waiting, daemon=True).start()
    try:
        if wait_in == "map":
            pool.map(sleepy, range(4))
        elif wait_in == "imap":
            list(pool.imap(sleepy, iter(range(4))))
        else:
            pool.apply_async(sleepy, (0,)).get()
    except KeyboardInterrupt:
        say("interrupted")
        if not reuse:
            raise
    say(pool.map(square, range(10)))
    say(pool.map_async(square, range(5)).get(timeout=20))
    say(pool.apply_async(square, (7,)).get(timeout=20))
    pool.terminate()
    pool.join()
