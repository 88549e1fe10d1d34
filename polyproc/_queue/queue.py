"""``polyproc.queues``: ``Queue``, ``JoinableQueue`` and ``SimpleQueue``.

Same names, signatures and meaning as ``multiprocessing.queues``, built on
a shared-memory ring (``_queue.ring``; the OS pieces are in
``_queue.primitives``) instead of a pipe plus a feeder thread.  What that changes
for a caller, all of it additions to what stdlib code may rely on:

* a queue can be passed to Pool tasks, Executor submits and processes
  started after it was made (it pickles to a name that any process can
  map; the stdlib raises "Queue objects should only be shared between
  processes through inheritance");
* ``put()`` pickles in the caller and raises there, at the call, what
  pickle raised (as the stdlib's ``SimpleQueue.put``; see
  ``_exceptions.pickling_error``); the stdlib ``Queue``'s feeder thread
  drops the item silently (gh-79423);
* an item is in the queue when ``put()`` returns, so a process that exits
  right after putting loses nothing and joining it cannot deadlock;
* a process SIGKILLed while putting or getting leaves the queue usable for
  the others (robust locks; commits that a survivor completes);
* ``put_many(items)`` and ``get_many(max_items)`` move batches for one
  lock round trip each.

Reused from the stdlib: the exceptions ``queue.Empty`` and ``queue.Full``
(so ``except queue.Empty`` keeps working), and its resource tracker, which
removes the shared memory of a queue whose creating process was killed.

Lifetime: the process that creates a queue owns its shared memory and
removes it when the queue object is garbage-collected there or that
process exits, but never before the children it was passed to at
``start()`` have been joined (as the stdlib's queue, it survives a parent
that drops it right after starting them).  Other processes keep using a
queue they already hold; one unpickled after its owner dropped it (a Pool
task still queued when the creator let go of the queue) raises
``QueueGoneError``.

``close()``, ``join_thread()`` and ``cancel_join_thread()`` keep their
stdlib meaning for this process's handle, with no feeder thread behind
them: ``close()`` makes further ``put``/``get`` on the handle raise
``ValueError``; ``join_thread()`` has nothing left to flush and returns at
once; ``cancel_join_thread()`` has nothing that could be lost and does
nothing.

Elsewhere than x86-64 Linux (see ``primitives.AVAILABLE``) these names
are the stdlib's classes.
"""
from __future__ import annotations

import types
from multiprocessing.context import get_spawning_popen
from queue import Empty, Full
from typing import Any, Generic, Iterable, TypeVar

from .. import _public
from . import primitives
from .._exceptions import QueueGoneError
from .ring import QueueGone, Ring, Timeout
from .._transport.serialization import ZERO_COPY_THRESHOLD, dumps, loads, release

__all__ = ["Queue", "SimpleQueue", "JoinableQueue"]   # as the stdlib's

# Stdlib code sometimes reads ``q._maxsize``; an unbounded stdlib queue
# reports the semaphore's limit there.  (typeshed omits SEM_VALUE_MAX.)
try:
    from multiprocessing.synchronize import SEM_VALUE_MAX as _SEM_VALUE_MAX  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - platforms without sem_open
    _SEM_VALUE_MAX = 2**31 - 1

_WHAT = "queue item"

# Items are stored as payloads: a pickle made by ``dumps`` (its first byte
# is 0x80, PROTO, or 0xff for a zero-copy payload), or, for the two most
# common message types, the raw bytes behind a tag byte that no pickle
# starts with.  Pickling a 64-byte ``bytes`` and loading it back costs
# about 0.3 µs of the 1.3 µs a put/get pair is worth to a 1x1 queue;
# the tag costs a concatenation and a slice.  Only the exact types
# (a subclass must come back as itself: it is pickled), and only below
# the size where ``dumps`` sends buffers through shared memory instead.
_RAW_BYTES = b"\x00"
_RAW_STR = b"\x01"
_RAW_LIMIT = ZERO_COPY_THRESHOLD - 1


def _encode(obj: Any) -> bytes:
    """The payload of *obj*: raw bytes or UTF-8 behind a tag, else ``dumps``."""
    cls = obj.__class__
    if cls is bytes:
        if len(obj) < _RAW_LIMIT:
            return _RAW_BYTES + obj
    elif cls is str:
        if len(obj) < _RAW_LIMIT // 4:          # at most 4 UTF-8 bytes per character
            return _RAW_STR + obj.encode("utf-8", "surrogatepass")
    return dumps(obj, _WHAT)


def _decode(payload: bytes) -> Any:
    """The item of a payload made by ``_encode``."""
    tag = payload[0]
    if tag == 0:
        return payload[1:]
    if tag == 1:
        return payload[1:].decode("utf-8", "surrogatepass")
    return loads(payload, _WHAT)

# The type of the items, for type checkers (as typeshed's
# ``multiprocessing.queues.Queue[_T]``).
_T = TypeVar("_T")


def _attach(name: str) -> Ring:
    try:
        return Ring.attach(name)
    except QueueGone:
        raise QueueGoneError(
            f"the queue {name!r} no longer exists: the process that created "
            "it dropped or closed it, or exited.  Keep the queue object alive "
            "in the creating process for as long as other processes use it."
        ) from None


class _RingQueue(Generic[_T]):
    """What Queue and SimpleQueue share: a handle on a ring, open or closed."""

    def __init__(self, maxsize: int) -> None:
        self._ring = Ring.create(maxsize if maxsize > 0 else 0)
        self._closed = False

    def __getstate__(self) -> dict:
        # Allowed at any time, unlike the stdlib's (see module docstring).
        popen = get_spawning_popen()
        if popen is not None:
            # Pickled to start a child (spawn, forkserver), which maps the
            # queue only once it runs.  The stdlib's queue survives its
            # parent dropping it right after start() (the child got the
            # pipes' descriptors): so must ours.  Pin the handle, and so the
            # files, to the child's Popen object, which lives until the
            # child has been joined.
            popen.__dict__.setdefault("_polyproc_queue_pins", []).append(self._ring)
        return {"name": self._ring.name}

    def __setstate__(self, state: dict) -> None:
        self._ring = _attach(state["name"])
        self._closed = False

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"size={self._ring.qsize()}"
        return f"<{type(self).__module__}.{type(self).__qualname__} {self._ring.name} {state}>"

    # --- extras: batches -------------------------------------------------

    def put_many(self, items: Iterable[_T], block: bool = True,
                 timeout: float | None = None) -> None:
        """Put every item of *items*, in order, for one lock round trip.

        Every item is pickled first, so an unpicklable one raises
        what pickle raised before any of them is put.  On a bounded
        queue, blocks (at most *timeout* seconds) until all fit; raises
        ``queue.Full`` when they do not, saying how many were put (those
        stay in the queue).
        """
        self._check_closed()
        payloads: list = []
        try:
            for obj in items:
                payloads.append(_encode(obj))
        except BaseException:
            for payload in payloads:    # none of them will be put
                release(payload)
            raise
        if not payloads:
            return
        try:
            done = self._ring.put(payloads, block, timeout)
        except Timeout:
            done = 0
        if done < len(payloads):
            for payload in payloads[done:]:
                release(payload)
            raise Full(f"put_many: {done} of {len(payloads)} items were put "
                       "before the queue stayed full")

    def get_many(self, max_items: int | None = None, block: bool = True,
                 timeout: float | None = None) -> list[_T]:
        """Remove and return up to *max_items* items (all available if None).

        Blocks, at most *timeout* seconds, until at least one item is
        there, then returns at once with what is available; raises
        ``queue.Empty`` if none came.
        """
        self._check_closed()
        if max_items is None:
            max_items = 2**62
        elif max_items < 1:
            raise ValueError(f"max_items must be at least 1, not {max_items!r}")
        try:
            payloads = self._ring.get(max_items, block, timeout)
        except Timeout:
            raise Empty from None
        return [_decode(p) for p in payloads]

    # --- stdlib internals that stdlib code reaches for ----------------------

    @property
    def _reader(self) -> QueueReader[_T]:
        """The readable end, as in the stdlib: ``connection.wait([q._reader])``
        works and ``q._reader.recv()`` takes an item
        (``concurrent.futures.ProcessPoolExecutor`` uses both)."""
        reader = self.__dict__.get("_reader_end")
        if reader is None:
            reader = self.__dict__["_reader_end"] = QueueReader(self)
        return reader

    # ``Queue[int]`` at runtime: the stdlib's ``types.GenericAlias``, as for
    # ``multiprocessing.queues.Queue`` (Generic's own alias would do too).
    __class_getitem__: Any = classmethod(types.GenericAlias)


class QueueReader(Generic[_T]):
    """A queue seen as the read end of a pipe (the stdlib's ``q._reader``).

    ``fileno()`` is a FIFO that is readable while the queue holds items;
    ``recv()`` removes and returns one, blocking until there is one;
    ``poll(timeout)`` says whether one is there, waiting at most *timeout*.
    """

    def __init__(self, queue: _RingQueue[_T]) -> None:
        self._queue = queue
        self._fd = queue._ring.make_waitable()
        self.closed = False

    def fileno(self) -> int:
        return self._fd

    def recv(self) -> _T:
        self._queue._check_closed()
        return _decode(self._queue._ring.take_for_reader())

    def poll(self, timeout: float | None = 0.0) -> bool:
        import select
        import time
        ring = self._queue._ring
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ring.has_items():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._fd], [], [], remaining)[0]:
                return False
            if not ring.has_items():
                ring._rearm(take=False)     # a stale byte: clear it, wait again
                if deadline is not None and time.monotonic() >= deadline:
                    return False
        return True

    def close(self) -> None:
        """Stdlib code closes the reader when it is done; the queue stays usable."""
        self.closed = True


class Queue(_RingQueue[_T]):
    """A process-shared FIFO queue (``multiprocessing.Queue``).

    ``maxsize <= 0`` means unbounded: ``put`` then never blocks.
    """

    def __init__(self, maxsize: int = 0, *, ctx: Any = None) -> None:
        super().__init__(maxsize)
        self._maxsize = maxsize if maxsize > 0 else _SEM_VALUE_MAX

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        maxsize = self._ring.maxsize
        self._maxsize = maxsize if maxsize > 0 else _SEM_VALUE_MAX

    def put(self, obj: _T, block: bool = True, timeout: float | None = None) -> None:
        """Put *obj* into the queue.

        The object is pickled here and an unpicklable one raises what
        pickle raised.  If the queue is bounded and full, blocks
        (at most *timeout* seconds) until a slot is free; raises
        ``queue.Full`` if none became free, or at once when *block* is
        false.  Raises ``ValueError`` if the queue was closed.
        """
        if self._closed:
            self._check_closed()
        item: Any = obj                     # (type checkers do not narrow a _T)
        if item.__class__ is bytes and len(item) < _RAW_LIMIT:
            payload = _RAW_BYTES + item     # _encode's first case, minus a call
        else:
            payload = _encode(item)
        try:
            self._ring.put_one(payload, block, timeout)
        except Timeout:
            release(payload)        # free its shared-memory segments, if any
            raise Full from None
        except OSError:             # no memory to grow the ring: not put
            release(payload)
            raise

    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        """Remove and return an item from the queue.

        Blocks (at most *timeout* seconds) until an item is available;
        raises ``queue.Empty`` if none came, or at once when *block* is
        false.  Raises ``ValueError`` if the queue was closed.
        """
        if self._closed:
            self._check_closed()
        try:
            payload = self._ring.get_one(block, timeout)
        except Timeout:
            raise Empty from None
        if payload[0] == 0:
            return payload[1:]              # _decode's first case, minus a call
        return _decode(payload)

    def put_nowait(self, obj: _T) -> None:
        """Equivalent to ``put(obj, False)``."""
        return self.put(obj, False)

    def get_nowait(self) -> _T:
        """Equivalent to ``get(False)``."""
        return self.get(False)

    def qsize(self) -> int:
        """Return the number of items in the queue (exact when it is quiet)."""
        return self._ring.qsize()

    def empty(self) -> bool:
        """Return True if the queue is empty (a snapshot, as in the stdlib)."""
        return self._ring.qsize() == 0

    def full(self) -> bool:
        """Return True if the queue is bounded and holds *maxsize* items."""
        maxsize = self._ring.maxsize
        return bool(maxsize) and self._ring.qsize() >= maxsize

    def close(self) -> None:
        """Close this handle: further ``put``/``get`` on it raise ``ValueError``.

        The items stay in the queue for other handles and processes.
        """
        self._closed = True

    def join_thread(self) -> None:
        """Join the feeder thread: there is none, every item is already in
        shared memory, so this returns at once.  As in the stdlib it may only
        be called after ``close()``.
        """
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self) -> None:
        """Stdlib: do not wait for the feeder thread at exit.  Nothing can be
        lost here (there is no feeder thread), so this does nothing.
        """


class JoinableQueue(Queue[_T]):
    """A ``Queue`` that also counts unfinished tasks (``task_done``/``join``)."""

    def task_done(self) -> None:
        """Indicate that a formerly enqueued task is complete.

        Raises ``ValueError`` if called more times than items were put.
        """
        self._ring.task_done()

    def join(self) -> None:
        """Block until every item put has been matched by a ``task_done()``."""
        self._ring.join()


class SimpleQueue(_RingQueue[_T]):
    """A simplified queue (``multiprocessing.SimpleQueue``): put, get, empty, close."""

    def __init__(self, *, ctx: Any = None) -> None:
        super().__init__(0)

    def put(self, obj: _T) -> None:
        """Put *obj* into the queue (pickled here: unpicklable raises at once)."""
        self._check_closed()
        self._ring.put_one(_encode(obj), True, None)

    def get(self) -> _T:
        """Remove and return an item, blocking until one is available."""
        self._check_closed()
        return _decode(self._ring.get_one(True, None))

    def empty(self) -> bool:
        """Return True if the queue is empty."""
        return self._ring.qsize() == 0

    def close(self) -> None:
        """Close this handle: further ``put``/``get`` on it raise ``ValueError``."""
        self._closed = True


# Public as ``polyproc.queues.X`` (reprs, pickles), even in a process that
# never imported that module (a worker that received a queue in a task).
_public.fixup_module_metadata("polyproc.queues", {
    "Queue": Queue, "JoinableQueue": JoinableQueue, "SimpleQueue": SimpleQueue,
    "QueueReader": QueueReader})

if not primitives.AVAILABLE:  # pragma: no cover - non-Linux
    # The stdlib's classes stand in: a platform fallback that type checkers,
    # describing polyproc's own classes, are told to ignore.
    from multiprocessing.queues import (JoinableQueue, Queue,  # type: ignore[assignment]
                                        SimpleQueue)
