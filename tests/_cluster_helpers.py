"""Task functions of the cluster tests (tests/test_cluster*.py).

A module of their own, importable by the Dask workers (tests/_cluster.py
puts tests/ on their path), so that they travel by reference.
"""
from __future__ import annotations

import os
import pathlib
import signal
import time

INITIALIZED: object = None


class TaskFailed(Exception):
    """A user's exception type: it must arrive as itself."""


def square(x: int) -> int:
    return x * x


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise TaskFailed(f"task {x} failed on purpose")
    return x


def record_and_die(path: str) -> None:
    """Append this run to *path*, then SIGKILL this Dask worker process."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def die_on(x: int, bad: int, path: str) -> int:
    if x == bad:
        record_and_die(path)
    return x


def announce_and_sleep(path: str, seconds: float) -> int:
    """Write this worker's pid to *path* (atomically), then sleep."""
    tmp = pathlib.Path(path + ".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.rename(path)
    time.sleep(seconds)
    return os.getpid()


def pid(_: object = None) -> int:
    return os.getpid()


def initialize(value: object) -> None:
    global INITIALIZED
    INITIALIZED = value


def initialized(_: object = None) -> object:
    return INITIALIZED


def put_all(queue, items) -> int:
    for item in items:
        queue.put(item)
    return len(items)


def take(queue, n: int) -> list:
    return [queue.get(timeout=20) for _ in range(n)]


def nap(item: tuple) -> int:
    """``item`` is (value, seconds): sleep, then return value."""
    value, seconds = item
    time.sleep(seconds)
    return value


def negate_in_place(array) -> float:
    array *= -1
    return float(array[5])


def sleep_until(path: str, release: str) -> int:
    """Write this worker's pid to *path*, then sleep (in ``time.sleep``) until *release* exists."""
    _announce(path)
    while not os.path.exists(release):
        time.sleep(0.05)
    return os.getpid()


def wait_on_lock_until(path: str, release: str) -> int:
    """Write this worker's pid to *path*, then wait in ``Lock.acquire`` until *release* exists."""
    import threading
    lock = threading.Lock()
    lock.acquire()
    _announce(path)
    while not os.path.exists(release):
        lock.acquire(timeout=0.05)
    return os.getpid()


def _announce(path: str) -> None:
    tmp = pathlib.Path(path + ".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.rename(path)


def hold_the_gil(path: str, release: str) -> int:
    """Write this worker's pid to *path*, then wait in C, holding the GIL,
    until a byte can be read from the FIFO *release*: the byte count.

    A wait rather than a computation sized in advance, so that it lasts as
    long as the test needs on any machine.  ``ctypes.PyDLL`` calls keep
    the GIL (``CDLL`` calls release it).
    """
    import ctypes
    reader = os.open(release, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(release, os.O_WRONLY)  # ours: read() waits, not ends at EOF
    os.set_blocking(reader, True)
    libc = ctypes.PyDLL(None)
    libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    libc.read.restype = ctypes.c_ssize_t
    buffer = ctypes.create_string_buffer(1)
    try:
        _announce(path)
        return libc.read(reader, buffer, 1)
    finally:
        os.close(writer)
        os.close(reader)
