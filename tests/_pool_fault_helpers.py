"""Task functions and initializers for tests/test_pool_faults.py (importable,
so that spawned workers find them)."""
from __future__ import annotations

import ctypes
import os
import signal
import time


def square(x):
    return x * x


def pid_of(_=None):
    return os.getpid()


def wait_at_gate(announce: str, gate: str) -> None:
    """Pool initializer: write this worker's pid to the *announce* FIFO, then
    wait for a one-byte token from the *gate* FIFO (see ``StartGate``).

    Until it gets a token the worker is starting: it has not told the pool
    it is ready.
    """
    fd = os.open(announce, os.O_WRONLY)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    fd = os.open(gate, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)


def exit_initializer(code: int) -> None:
    os._exit(code)


def segfault_initializer() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def count_run_and_die(path: str) -> None:
    """Add one byte to *path* (one per run), then SIGKILL this worker."""
    with open(path, "ab") as f:
        f.write(b".")
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # not reached


class KillsWorkerWhenPickled:
    """A result that SIGKILLs the process that pickles it (the worker, while
    it sends its results)."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # not reached


def kill_when_result_sent(x: int, bad: int, path: str):
    """Returns x; for *bad*, counts the run in *path* and returns a result
    whose pickling kills the worker."""
    if x != bad:
        return x
    with open(path, "ab") as f:
        f.write(b".")
    return KillsWorkerWhenPickled()
