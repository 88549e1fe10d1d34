"""Task functions for the fork-template tests (importable, so spawn workers find them)."""
from __future__ import annotations

import logging
import os
import threading

import polyproc

# Held by a thread of the test process while a worker is replaced.
USER_LOCK = threading.Lock()

# Changed by the test after Pool(): which value does a replacement see?
STATE = "at Pool()"


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def take_lock_and_log(_=None) -> tuple[bool, int, int]:
    """(took USER_LOCK within 2 s, records logged, pid).

    Getting a logger and setting its level take the ``logging`` module's
    lock; emitting takes the handler's.
    """
    took = USER_LOCK.acquire(timeout=2)
    if took:
        USER_LOCK.release()
    logger = logging.getLogger(f"polyproc.tests.worker{os.getpid()}")
    logger.propagate = False
    handler = _ListHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.debug("a replacement worker logs")
    logger.removeHandler(handler)
    return took, len(handler.records), os.getpid()


def lineage(_=None) -> tuple[int, int, int | None]:
    """(pid, the OS parent's pid, parent_process().pid)."""
    parent = polyproc.parent_process()
    return os.getpid(), os.getppid(), parent.pid if parent is not None else None


def state(_=None) -> tuple[str, int]:
    return STATE, os.getpid()


def imported(name: str) -> bool:
    """Whether module *name* is imported in this worker (before any task needs it)."""
    import sys
    return name in sys.modules
