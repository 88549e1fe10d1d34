"""How the processes of a queue wait for each other (the ring is in ``_queue.ring``).

A consumer that finds a queue empty, a producer that finds a bounded queue
full and a ``JoinableQueue.join()`` all wait for another process to change
a word of the queue's control segment.  This module holds everything about
that waiting, so that ``_queue.ring`` only states *what* is waited for:

* **Spin first** (``spin_until_differ``).  On a busy queue the item a
  consumer waits for usually comes within microseconds, and a futex sleep
  plus wake-up costs far more, so a consumer re-reads the ring's counters a
  few hundred times before it sleeps.  It gives its CPU away
  (``sched_yield``) every ``YIELD_EVERY`` checks: on a machine with more
  processes than cores, the producer it waits for may be queued behind it
  on the same core (measured on the 2-core development machine with other
  work running: pure spinning lost up to 2x against yielding).

* **Then sleep on a futex word, in slices** (``deadline``, ``wait_slice``).
  Every commit bumps its side's futex word; a sleeper passes the value it
  read before it found nothing to do, so a change in between is never
  slept through (see "no lost wake-up" in ``_queue.ring``).  A sleep lasts
  at most ``WAIT_SLICE``, so Ctrl-C is seen promptly and a wake-up lost to
  a killed process costs at most one slice.

* **A registry of sleepers** (``Waiters``).  A notifier reads one count
  per kind of waiter (``GET_WAITERS``, ``PUT_WAITERS``, ``JOIN_WAITERS``)
  and makes the wake-up system call only when it is not zero.  A count kept
  by increments would stay high forever after a waiter is SIGKILLed, and
  every put would then pay a useless system call (+1 µs, 60% of a put).
  So each waiter writes its pid into a slot, and the count is recomputed
  from the slots, dropping dead pids, whenever a waiter comes or goes
  (under the side's lock, off the fast path), and by a notifier whose
  wake-ups have found nobody ``IDLE_WAKES_BEFORE_RECOUNT`` times in a row.
  More than ``SLOTS`` waiters of one kind are counted in an overflow word,
  without that healing.

* **A FIFO for stdlib code** (``Fifo``).  ``multiprocessing.connection.
  wait()`` (and ``concurrent.futures.ProcessPoolExecutor``, on its result
  queue) waits on ``q._reader``, which needs a file descriptor that is
  readable while the queue holds items.  The queue's named pipe
  (``/dev/shm/<name>_fifo``, opened by name so that any process can write
  to it) is that descriptor; ``_queue.ring`` keeps it level-true.

Indexes here are into the u64 view of the control segment, whose layout is
in ``_queue.ring``; this module owns words 48-51 and 160-211.
"""
from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable

from . import primitives
from .primitives import WAIT_SLICE

__all__ = [
    "GET_WAITERS",
    "JOIN_WAITERS",
    "PUT_WAITERS",
    "WAITABLE",
    "Fifo",
    "Waiters",
    "deadline",
    "expired",
    "fifo_path",
    "spin_until_differ",
    "wait_slice",
]

# Waiter counts, one per kind (u64 indexes): the words notifiers read.
GET_WAITERS, PUT_WAITERS, JOIN_WAITERS = 48, 49, 50
WAITABLE = 51           # someone waits on the queue's FIFO (see Fifo)
# The registry: SLOTS pids per kind, in the order of the counts above,
# then one overflow count per kind.
SLOTS = 16
SLOTS_BASE = 160
OVERFLOW = SLOTS_BASE + 3 * SLOTS
IDLE_WAKES_BEFORE_RECOUNT = 64

SPIN = 400
YIELD_EVERY = 20
_yield = os.sched_yield


# ---------------------------------------------------------------- spinning

def spin_until_differ(h: memoryview, first: int, second: int) -> bool:
    """Re-read ``h[first]`` and ``h[second]`` until they differ; False if they never did.

    At most ``SPIN`` checks, giving the CPU away every ``YIELD_EVERY``:
    tens of microseconds on an idle machine, longer where other processes
    wait for the CPU (each yield lets them run).
    """
    for _ in range(SPIN // YIELD_EVERY):
        for _ in range(YIELD_EVERY):
            if h[first] != h[second]:
                return True
        _yield()
    return False


# ---------------------------------------------------------------- deadlines

def deadline(block: bool, timeout: float | None) -> float | None:
    """The ``time.monotonic()`` by which a wait gives up; None: never."""
    if not block or timeout is None:
        return None
    return time.monotonic() + max(0.0, timeout)


def expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def wait_slice(deadline: float | None) -> float:
    """How long the next futex sleep may last: a slice, or less near the deadline."""
    if deadline is None:
        return WAIT_SLICE
    return min(WAIT_SLICE, deadline - time.monotonic())


# ---------------------------------------------------------------- registry

class Waiters:
    """The registry of a queue's sleeping processes, in its control segment.

    ``add`` and ``drop`` are called with the lock of the waiter's side held
    (GET_LOCK for ``GET_WAITERS``, PUT_LOCK for ``PUT_WAITERS``, DONE_LOCK
    for ``JOIN_WAITERS``); ``wake`` and ``withdraw`` take it themselves.
    """

    def __init__(self, h: memoryview):
        self._h = h
        self._idle_wakes = 0

    def add(self, kind: int) -> int:
        """Register this process as a waiter of *kind*; return its token (slot)."""
        h = self._h
        base = SLOTS_BASE + SLOTS * (kind - GET_WAITERS)
        me = os.getpid()
        token = -1
        for slot in range(base, base + SLOTS):
            if h[slot] == 0:
                h[slot] = me
                token = slot
                break
        if token < 0:
            h[OVERFLOW + kind - GET_WAITERS] += 1
        self.recount(kind)
        return token

    def drop(self, kind: int, token: int) -> None:
        """Take back the registration *token* that ``add`` returned."""
        h = self._h
        if token >= 0:
            h[token] = 0
        else:
            overflow = OVERFLOW + kind - GET_WAITERS
            h[overflow] = max(0, h[overflow] - 1)
        self.recount(kind)

    def recount(self, kind: int) -> None:
        """Set the count of *kind* from its slots, freeing the slots of dead pids."""
        h = self._h
        base = SLOTS_BASE + SLOTS * (kind - GET_WAITERS)
        me = os.getpid()
        count = h[OVERFLOW + kind - GET_WAITERS]
        for slot in range(base, base + SLOTS):
            pid = h[slot]
            if pid and pid != me and not _alive(pid):
                h[slot] = pid = 0
            count += pid != 0
        h[kind] = count

    def wake(self, futex: int, kind: int, lock: int, repair: Callable[[], None]) -> None:
        """Wake the waiters of *kind* sleeping on *futex*; now and then heal the count.

        A registered waiter may be between two slices of its wait, so one
        wake-up that finds nobody proves nothing; many in a row mean the
        count is probably stale (its waiter was killed): recount, if *lock*
        is free right now (*repair* first if its holder died).
        """
        if primitives.futex_wake(futex):
            self._idle_wakes = 0
            return
        self._idle_wakes += 1
        if self._idle_wakes < IDLE_WAKES_BEFORE_RECOUNT:
            return
        self._idle_wakes = 0
        got = primitives.mutex_try(lock)
        if got is None:
            return
        try:
            if got:
                repair()
            self.recount(kind)
        finally:
            primitives.mutex_release(lock)

    def withdraw(self, kind: int, token: int, lock: int, repair: Callable[[], None]) -> None:
        """``drop`` for a waiter that left by an exception (Ctrl-C): takes *lock* itself."""
        if primitives.mutex_acquire(lock, None):
            repair()
        try:
            self.drop(kind, token)
        finally:
            primitives.mutex_release(lock)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # exists, belongs to someone else
        return True
    return True


# ---------------------------------------------------------------- FIFO

def fifo_path(name: str) -> str:
    """The FIFO of the queue *name* (under /dev/shm, so shm_unlink removes it too)."""
    return "/dev/shm" + name + "_fifo"


class Fifo:
    """This process's end of a queue's FIFO, opened on first use."""

    def __init__(self, name: str):
        self._path = fifo_path(name)
        self._fd: int | None = None

    def fileno(self) -> int:
        if self._fd is None:
            # Read-write: opening never blocks, and the pipe never sees
            # end-of-file when other processes close their ends.
            fd = os.open(self._path, os.O_RDWR | os.O_NONBLOCK)
            weakref.finalize(self, os.close, fd)
            self._fd = fd
        return self._fd

    def signal(self) -> None:
        """Make the FIFO readable (one byte)."""
        try:
            os.write(self.fileno(), b"\0")
        except BlockingIOError:         # full: readable already
            pass

    def drain(self) -> None:
        """Read every byte there is, without blocking."""
        try:
            while os.read(self.fileno(), 4096):
                pass
        except BlockingIOError:
            pass
