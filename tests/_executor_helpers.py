"""Task functions for tests/test_executor.py.

They live in an importable module so that spawned workers can load them
by reference.
"""
from __future__ import annotations

import os
import signal
import threading
import time

_initialized = None


def square(x):
    return x * x


def add(a, b=0, *, c=0):
    return a + b + c


def pid_of_worker(_=None):
    return os.getpid()


def fail_with(message):
    raise ValueError(message)


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def exit_now(code):
    os._exit(code)


def square_or_kill(x, kill_at):
    if x == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def kill_once(marker):
    """Dies by SIGKILL the first time (no *marker* file yet), returns after."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def sleep_then_return(seconds, value=None):
    time.sleep(seconds)
    return value


def block_until(path, limit=20.0, value=None):
    """Run until *path* exists (the test's signal to finish), at most *limit* s."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return value


def touch(path, value=None):
    """Leaves *path* behind as proof that the task ran."""
    with open(path, "w"):
        pass
    return value


def return_unpicklable():
    return threading.Lock()


class BadInitError(Exception):
    """An exception whose __init__ takes two arguments: pickle can't rebuild it."""

    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code = code


def raise_bad_init():
    raise BadInitError(7, "needs two arguments")


def set_global(value):
    global _initialized
    _initialized = value


def get_global(_=None):
    return _initialized


def failing_initializer():
    raise RuntimeError("initializer broke")


def touch_after(seconds, path):
    """Leaves *path* behind, *seconds* after the task started."""
    time.sleep(seconds)
    touch(path)


def _refuse_to_load(where):
    raise RuntimeError(f"this object refuses to be unpickled ({where})")


class FailsToUnpickle:
    """Pickles fine; unpickling it raises (the receiving side's failure)."""

    def __init__(self, where="receiver"):
        self.where = where

    def __reduce__(self):
        return (_refuse_to_load, (self.where,))


def return_fails_to_unpickle():
    return FailsToUnpickle("parent")


def raise_unpicklable_exception():
    error = ValueError("carries a lock")
    error.lock = threading.Lock()
    raise error


def segfault():
    """A real segmentation fault (a NULL read in C), without a core file."""
    import ctypes
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ctypes.string_at(0)


class HoldsALock:
    """Its bound methods cannot be pickled, even by cloudpickle."""

    def __init__(self):
        self.lock = threading.Lock()

    def method(self):
        return 1


def keywords_back(**kwargs):
    return kwargs
