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
  So each waiter writes its pid, and the value of the futex word it is
  going to sleep on, into a slot, and the count is recomputed from the
  slots whenever a waiter comes or goes (under the side's lock, off the
  fast path) and whenever a notifier wakes the sleepers.

* **The waker retires whom it woke** (``Waiters.wake``).  A woken waiter
  takes its registration back only once it runs, and on a loaded machine
  that can be milliseconds later: until then every put saw the count up
  and paid a wake-up call that found nobody (measured: 2,251 of them for 5
  sleeps of a consumer in 100,000 puts, 1,057 for one sleep; this is what
  made the direction of a 1x1 benchmark matter, see docs/queues.md).  So
  the notifier, under the waiters' lock, frees the slots of the waiters
  whose word has changed since they read it, and only then wakes the
  sleepers.  That is safe: a waiter whose word has changed either sleeps
  already (the wake-up that follows reaches it) or will find the word
  changed when it calls ``futex_wait`` and not sleep at all.  A waiter
  that registered after the last change keeps its slot, and the next
  commit's notifier wakes it.  A killed waiter is retired the same way.
  More than ``SLOTS`` waiters of one kind are counted in an overflow word,
  which only they take back.

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
# A slot: the waiter's pid in the low half, the futex word it sleeps on
# (a u32) in the high half.
_PID_MASK = 0xFFFF_FFFF

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
    *h* is the control segment as u64 words, *f* as u32 words (the futex
    words' view).
    """

    def __init__(self, h: memoryview, f: memoryview):
        self._h = h
        self._f = f

    def add(self, kind: int, seq: int) -> tuple[int, int]:
        """Register this process as a waiter of *kind* that will sleep while
        its futex word is *seq*; return its token for ``drop``."""
        h = self._h
        base = SLOTS_BASE + SLOTS * (kind - GET_WAITERS)
        value = os.getpid() | (seq << 32)
        token = (-1, 0)
        for slot in range(base, base + SLOTS):
            if h[slot] == 0:
                h[slot] = value
                token = (slot, value)
                break
        else:
            h[OVERFLOW + kind - GET_WAITERS] += 1
        self.recount(kind)
        return token

    def drop(self, kind: int, token: tuple[int, int]) -> None:
        """Take back the registration *token* that ``add`` returned.

        Its slot may have been freed by a waker meanwhile, and taken by
        another waiter since: it is cleared only if it still holds ours.
        """
        h = self._h
        slot, value = token
        if slot >= 0:
            if h[slot] == value:
                h[slot] = 0
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
            pid = h[slot] & _PID_MASK
            if pid and pid != me and not _alive(pid):
                h[slot] = pid = 0
            count += pid != 0
        h[kind] = count

    def wake(self, futex: int, word: int, kind: int, lock: int,
             repair: Callable[[], None]) -> None:
        """Wake the waiters of *kind* sleeping on *futex* (u32 word *word*).

        First, if *lock* is free right now (*repair* first if its holder
        died), retire the waiters whose word has changed since they read
        it (see "the waker retires whom it woke" above), so that the
        notifiers that follow read a count of 0 and skip the system call.
        With *lock* busy, a waiter of that side is running: it takes back
        its own registration.
        """
        got = primitives.mutex_try(lock)
        if got is not None:
            try:
                if got:
                    repair()
                self._retire(kind, self._f[word])
            finally:
                primitives.mutex_release(lock)
        primitives.futex_wake(futex)

    def _retire(self, kind: int, current: int) -> None:
        """Free the slots of *kind* whose waiters' word is no longer *current* (lock held)."""
        h = self._h
        base = SLOTS_BASE + SLOTS * (kind - GET_WAITERS)
        for slot in range(base, base + SLOTS):
            value = h[slot]
            if value and value >> 32 != current:
                h[slot] = 0
        self.recount(kind)

    def withdraw(self, kind: int, token: tuple[int, int], lock: int,
                 repair: Callable[[], None]) -> None:
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
