"""Recycled shared-memory segments: the sender refills a segment its receiver is done with.

Why
---
A fresh segment costs more than the copy into it: the kernel allocates and
zeroes every 4 KiB page (the sender's ``pwrite`` runs at about 45% of one
core's ``memcpy`` here), and frees them again when the receiver drops its
array.  A program that sends arrays of the same size again and again (a pool
mapping over 64 MB arrays, a producer feeding a queue) can instead refill a
segment whose receiver is done with it: a plain ``memcpy`` into pages that
already exist, and no page freeing at the other end.

How a receiver says it is done
------------------------------
A recycled segment starts with a one-page header, then the data::

    offset 0   state      PENDING (the sender filled it, the payload that
                          names it is not complete yet) -> IN_FLIGHT (handed
                          off: ``dumps`` returned the payload) -> OPENED (a
                          receiver mapped it) -> FREE (the receiver's objects
                          are gone)
    offset 4   orphaned   the sender has exited: whoever frees it, unlinks it
    offset 8   pinned     a receiver forked while holding it: never refill it
    offset 12  receiver   pid of the receiver (to notice a receiver that died)
    offset 16  generation how many times the sender refilled it: a payload
                          names the generation it was sent with, so a stale
                          payload (loaded twice, or after release) is refused
    offset 20  addressee  pid of the one receiver the payload goes to, if the
                          sender said so (``addressed_to``): a pool worker's
                          results go to the scheduler, which reads its pipe to
                          the end when the worker dies, so what it did not
                          get then is lost (``settle_drained``)

A new segment's header is all zeros, so it is PENDING from the moment it
exists: the session tracker (``tracker.py``) unlinks PENDING segments
of a sender that died, since no payload names them, and leaves IN_FLIGHT
ones to the receiver that may still take them.

The receiver maps the data privately (``MAP_PRIVATE``: its writes never reach
the segment) and hangs a ``weakref.finalize`` on the mapping; the mapping
dies when the last object built on it (a NumPy array, a memoryview) dies,
and the finalizer writes FREE.  Only then may the sender refill it, so the
receiver never sees a later send: copy semantics hold.
The sender may refill it from that moment on, even if it dies right after:
whoever wrote FREE unlinks the segment (because its sender is gone) only if
it still reads FREE at the same generation (``_unlink_unless_refilled``).

A forked child inherits its parent's mappings, and a private mapping still
shows the segment's pages until they are written.  So before every
``os.fork`` the receiver marks each segment it still maps as *pinned*: the
sender never refills a pinned segment, it only unlinks it once FREE.

What stays in /dev/shm, and for how long
----------------------------------------
The sender keeps at most ``CACHE_LIMIT`` bytes of recycled segments (1 GiB,
or less where a quarter of /dev/shm shared by one process per core is
less; past that it uses one-shot segments, which the receiver unlinks on
open).  FREE segments unused for
``IDLE_S`` seconds, and segments whose receiver died holding them, are
unlinked at the next send; all FREE ones are unlinked when the sender exits.
A segment still in flight or in use when its sender exits is marked
orphaned, and the receiver's finalizer unlinks it.  A sender that dies
without a word (SIGKILL) is the tracker's job: it unlinks the FREE and
PENDING segments at once and orphans the others (``settle_dead_sender``).
A segment whose receiver died holding it is dropped by the sender at its
next send, or at once when a carrier releases the payload (a pool whose
worker died with its arguments).  Anything left after that (a receiver
killed before reading) stays until the session ends.
"""
from __future__ import annotations

import contextlib
import errno
import mmap
import os
import struct
import threading
import time
import weakref
from typing import Callable, Iterator

from . import shm as _shm
from . import tracker

__all__ = ["HEADER", "acquire", "hand_off", "addressed_to", "drained",
           "attach", "release", "trim", "settle_dead_sender", "settle_orphan",
           "settle_drained"]

HEADER = mmap.PAGESIZE
# PENDING is 0: a header of zeros (a segment just created, or one whose
# creator died before writing it) belongs to nobody but its creator.
PENDING, IN_FLIGHT, OPENED, FREE = 0, 1, 2, 3
_STATE, _ORPHANED, _PINNED, _RECEIVER, _GENERATION, _ADDRESSEE = 0, 4, 8, 12, 16, 20
IDLE_S = 5.0


def _cache_limit() -> int:
    # Every process of a pool may hold this much: with one per core, a
    # quarter of /dev/shm at most in all.
    try:
        st = os.statvfs("/dev/shm")
        share = st.f_blocks * st.f_frsize // (4 * (os.cpu_count() or 1))
        return min(1 << 30, share)
    except OSError:
        return 256 << 20


CACHE_LIMIT = _cache_limit()


def _get(m: mmap.mmap, offset: int) -> int:
    return struct.unpack_from("I", m, offset)[0]


def _put(m: mmap.mmap, offset: int, value: int) -> None:
    struct.pack_into("I", m, offset, value)


def _copy_into(dst: memoryview, src: memoryview) -> None:
    try:
        import numpy as np
    except ImportError:
        dst[:] = src
        return
    # NumPy copies without holding the GIL; a 64 MB copy takes ~10 ms.
    np.copyto(np.frombuffer(dst, np.uint8), np.frombuffer(src, np.uint8))


class _Entry:
    """The sender's record of one recycled segment (mapped shared, for refills)."""

    __slots__ = ("name", "capacity", "map", "last_used")

    def __init__(self, name: str, capacity: int, m: mmap.mmap):
        self.name, self.capacity, self.map = name, capacity, m
        self.last_used = time.monotonic()

    def state(self) -> int:
        return _get(self.map, _STATE)

    def dead_receiver(self) -> bool:
        if self.state() != OPENED:
            return False
        pid = _get(self.map, _RECEIVER)
        if not pid or pid == os.getpid():
            return False
        try:
            import psutil
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except Exception:  # NoSuchProcess: gone; anything else: assume gone
            return True

    def drop(self) -> None:
        _shm.unlink(self.name)
        try:
            self.map.close()
        except BufferError:  # pragma: no cover - a refill view still alive
            pass


class SegmentCache:
    """This process's recycled segments (one cache per process, reset at fork)."""

    def __init__(self):
        self.entries: dict[str, _Entry] = {}  # by name
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.receivers_checked = 0.0
        from multiprocessing import util
        # Runs at exit in the main process and in multiprocessing children
        # (which leave through os._exit after running these finalizers).
        util.Finalize(None, self.close, exitpriority=0)

    def total(self) -> int:
        return sum(e.capacity for e in self.entries.values())

    def reap(self, everything_free: bool = False) -> None:
        now = time.monotonic()
        # Asking whether receivers are alive costs a system call or two per
        # segment in use: at most once a second on the sending path.
        check_receivers = everything_free or now - self.receivers_checked > 1.0
        if check_receivers:
            self.receivers_checked = now
        for e in list(self.entries.values()):
            state = e.state()
            stale = state == FREE and (everything_free or _get(e.map, _PINNED)
                                       or now - e.last_used > IDLE_S)
            if stale or (check_receivers and e.dead_receiver()):
                del self.entries[e.name]
                e.drop()

    def acquire(self, data: memoryview) -> _shm.SegmentRef | None:
        n = data.nbytes
        with self.lock:
            self.reap()
            fits = [e for e in self.entries.values()
                    if e.state() == FREE and not _get(e.map, _PINNED)
                    and HEADER + n <= e.capacity <= 2 * (HEADER + n)]
            if fits:
                e = min(fits, key=lambda e: e.capacity)
                generation = (_get(e.map, _GENERATION) + 1) & 0xFFFFFFFF
                _put(e.map, _RECEIVER, 0)
                _put(e.map, _GENERATION, generation)
                _put(e.map, _ADDRESSEE, addressee())
                with memoryview(e.map) as whole:
                    _copy_into(whole[HEADER:HEADER + n], data)
                # Last: the data is in place.  PENDING until hand_off.
                _put(e.map, _STATE, PENDING)
                e.last_used = time.monotonic()
                return _shm.SegmentRef(e.name, n, True, generation)
            if self.total() + HEADER + n > CACHE_LIMIT:
                self.reap(everything_free=True)
                if self.total() + HEADER + n > CACHE_LIMIT:
                    return None  # the caller makes a one-shot segment
            try:
                ref, m = _shm.create_recyclable(data, HEADER)
            except OSError as error:
                if error.errno not in (errno.ENOSPC, errno.ENOMEM):
                    raise
                # /dev/shm full: give back what this process keeps idle,
                # then try once more (the caller falls back to the pipe).
                self.reap(everything_free=True)
                ref, m = _shm.create_recyclable(data, HEADER)
            _put(m, _ADDRESSEE, addressee())
            self.entries[ref.name] = _Entry(ref.name, HEADER + n, m)
            return ref

    def hand_off(self, name: str) -> None:
        e = self.entries.get(name)
        if e is not None:
            _put(e.map, _STATE, IN_FLIGHT)

    def drop(self, name: str) -> bool:
        """Unlink this process's segment *name* now; False if it is not ours."""
        with self.lock:
            e = self.entries.pop(name, None)
            if e is not None:
                e.drop()
            return e is not None

    def close(self) -> None:
        """At exit: unlink what is FREE, orphan what a receiver still needs."""
        if os.getpid() != self.pid:
            return
        with self.lock:
            for e in self.entries.values():
                if e.state() == FREE:
                    e.drop()
                    continue
                _put(e.map, _ORPHANED, 1)
                if e.state() == FREE:  # freed meanwhile: nobody else will unlink
                    e.drop()
            self.entries = {}


_cache: SegmentCache | None = None
_cache_lock = threading.Lock()


def acquire(data: memoryview) -> _shm.SegmentRef | None:
    """Put *data* in a recycled segment; None when the cache is at its limit.

    Raises ``OSError`` when a new segment cannot be created.
    """
    global _cache
    if _cache is None:
        with _cache_lock:
            if _cache is None:
                _cache = SegmentCache()
    return _cache.acquire(data)


_addressing = threading.local()


def addressee() -> int:
    """The receiver this thread's payloads go to (``addressed_to``); 0 if unsaid."""
    return getattr(_addressing, "pid", 0)


@contextlib.contextmanager
def addressed_to(pid: int | None) -> Iterator[None]:
    """Payloads made in this block (in this thread) go to process *pid* only.

    For a carrier whose one receiver reads everything sent before it acts on
    the sender's death (a pool's scheduler reads a dead worker's pipe to the
    end): once that receiver calls ``drained``, the tracker unlinks what it
    did not get, instead of leaving it for a reader that will never come.
    """
    before = addressee()
    _addressing.pid = pid or 0
    try:
        yield
    finally:
        _addressing.pid = before


def drained(sender: int) -> None:
    """This process read everything dead process *sender* sent it.

    Segments of *sender* addressed to this process and not received are
    unlinked by the tracker.  Never raises; starts no tracker.
    """
    tracker.drained(sender)


def hand_off(refs) -> None:
    """The payload naming *refs* is complete: PENDING -> IN_FLIGHT.

    From now on a carrier holds the segments, and the tracker leaves them
    to their receiver if this process dies.  Recycled segments change state
    in their header (a store); one-shot ones by a message to the tracker,
    which raises ``OSError`` if it cannot be told (the caller then sends
    the data through the pipe).
    """
    for ref in refs:
        if not ref.recycled:
            tracker.hand_off(ref.name, addressee())
        elif _cache is not None:
            _cache.hand_off(ref.name)


def trim() -> None:
    """Unlink every FREE recycled segment of this process (tests, low memory)."""
    if _cache is not None:
        with _cache.lock:
            _cache.reap(everything_free=True)


# -- Receiver side --------------------------------------------------------------

# Header mappings of the recycled segments this process still maps, by the
# id of the data mapping: pinned before a fork (see the module docstring).
_live: dict[int, mmap.mmap] = {}


def _receiver_done(key: int, header: mmap.mmap, name: str, generation: int) -> None:
    _live.pop(key, None)
    _put(header, _STATE, FREE)
    sender = _shm.creator_pid(name)
    if _get(header, _ORPHANED) or (sender is not None and not _alive(sender)):
        # Nobody will refill it: a sender that exited, even one that could
        # not say so (os._exit, SIGKILL), leaves the unlinking to us.
        _unlink_unless_refilled(header, name, generation)
    header.close()


def _unlink_unless_refilled(header: mmap.mmap, name: str, generation: int) -> None:
    """Unlink segment *name*, which this process set FREE at *generation*,
    unless its sender has refilled it since.

    Call only once the sender can never refill it again (orphaned, or
    dead), and only after finding that out.  The sender may refill a
    segment from the moment it reads FREE: in the meantime it may have
    refilled this one, handed a payload naming it to a carrier, and died,
    and that payload's receiver (or the tracker) is then the one to unlink
    it.  Read in this order, a FREE state of the same generation means no
    payload can name the segment any more.
    """
    if _get(header, _STATE) == FREE and _get(header, _GENERATION) == generation:
        _shm.unlink(name)


def attach(ref: _shm.SegmentRef) -> memoryview:
    """Map recycled segment *ref* privately; returns a view of its data.

    Raises ``SegmentGoneError`` when it does not exist and ``ValueError``
    when it is smaller than the payload says.
    """
    fd = _shm.open_existing(ref.name)
    try:
        size = os.fstat(fd).st_size
        if size < HEADER + ref.size:
            raise ValueError(f"shared-memory segment {ref.name} holds {size} "
                             f"bytes, the payload says {HEADER + ref.size}")
        header = mmap.mmap(fd, HEADER, flags=mmap.MAP_SHARED)
        if (_get(header, _STATE) != IN_FLIGHT
                or _get(header, _GENERATION) != ref.generation):
            header.close()
            raise _shm.SegmentGoneError(ref.name)  # loaded or released before
        data = mmap.mmap(fd, HEADER + ref.size, flags=mmap.MAP_PRIVATE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    _put(header, _RECEIVER, os.getpid())
    _put(header, _STATE, OPENED)
    key = id(data)
    _live[key] = header
    weakref.finalize(data, _receiver_done, key, header, ref.name, ref.generation)
    return memoryview(data)[HEADER:HEADER + ref.size]


def _map_header(name: str) -> mmap.mmap | None:
    """A shared mapping of segment *name*'s header; None if it can't be mapped.

    Raises ``OSError`` when the segment can't be opened (it is gone).
    """
    fd = _shm.open_existing(name)
    try:
        return mmap.mmap(fd, HEADER, flags=mmap.MAP_SHARED)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def release(ref: _shm.SegmentRef) -> None:
    """A payload that will never be loaded: let its sender refill the segment.

    A segment its receiver opened and then died holding (a pool worker
    killed with its arguments) is unlinked at once: nobody would ever mark
    it FREE, and its sender would notice only at its next send.
    """
    try:
        header = _map_header(ref.name)
    except OSError:
        return
    if header is None:
        return
    with header:
        if _get(header, _GENERATION) != ref.generation:
            return  # refilled since: this payload's data is gone already
        state = _get(header, _STATE)
        if state in (PENDING, IN_FLIGHT):
            _put(header, _STATE, FREE)
            if _get(header, _ORPHANED):
                _unlink_unless_refilled(header, ref.name, ref.generation)
        elif state == OPENED and not _alive(_get(header, _RECEIVER)):
            if _cache is None or not _cache.drop(ref.name):
                _shm.unlink(ref.name)  # another's: it forgets it at its next send


# -- Liveness, and the tracker's side -------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        import psutil
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


def settle_dead_sender(name: str, handed_off: bool) -> bool:
    """For the tracker: segment *name*'s creator died.  True once it is gone.

    Unlinked at once when nobody can need it: PENDING (no payload names it),
    FREE, or OPENED by a receiver that died too.  Otherwise (IN_FLIGHT: a
    carrier holds its payload; OPENED by a living receiver) it is marked
    orphaned, so that its receiver unlinks it when done, and kept.
    *handed_off* is the tracker's knowledge for a one-shot segment, which
    has no header.
    """
    if not _shm.is_recyclable_name(name):
        if handed_off:
            return False  # its receiver unlinks it on open
        _shm.unlink(name)
        return True

    def doomed(header: mmap.mmap) -> bool:
        _put(header, _ORPHANED, 1)
        state = _get(header, _STATE)
        return state in (PENDING, FREE) or (
            state == OPENED and not _alive(_get(header, _RECEIVER)))

    # Shorter than a header: it died creating it.
    return _unlink_if(name, doomed, torn=True)


def _unlink_if(name: str, doomed: Callable[[mmap.mmap], bool],
               torn: bool = False) -> bool:
    """Unlink the recyclable segment *name* if *doomed(header)*, read under
    its mapped header; True once it is gone (it may be gone already).  One
    shorter than a header is unlinked if *torn*, else kept."""
    try:
        header = _map_header(name)
    except OSError:
        return True
    if header is None:
        if torn:
            _shm.unlink(name)
        return torn
    with header:
        if doomed(header):
            _shm.unlink(name)
            return True
    return False


def settle_orphan(name: str, addressed: int = 0) -> bool:
    """For the tracker, every second: an orphan still in flight or in use.

    Unlinks it if a carrier released it (FREE), its receiver died holding
    it, or the one receiver it was addressed to died (*addressed*: the
    tracker's knowledge for a one-shot segment); True once it is gone.  A
    receiver that unlinks it says so itself.
    """
    if not _shm.is_recyclable_name(name):
        if addressed and not _alive(addressed):
            _shm.unlink(name)
            return True
        return False

    def doomed(header: mmap.mmap) -> bool:
        state = _get(header, _STATE)
        to = _get(header, _ADDRESSEE)
        return (state == FREE
                or (state == OPENED and not _alive(_get(header, _RECEIVER)))
                or (state == IN_FLIGHT and bool(to) and not _alive(to)))

    return _unlink_if(name, doomed)


def settle_drained(name: str, reader: int, addressed: int = 0) -> bool:
    """For the tracker: *reader* read everything this dead sender sent it.

    Unlinks the orphan *name* if it is still in flight and was addressed to
    *reader* (*addressed*: the tracker's knowledge for a one-shot segment):
    nobody else was ever going to take it.  True once it is gone.
    """
    if not _shm.is_recyclable_name(name):
        if addressed != reader:
            return False
        _shm.unlink(name)
        return True
    return _unlink_if(name, lambda header: (_get(header, _STATE) == IN_FLIGHT
                                            and _get(header, _ADDRESSEE) == reader))


def _pin_live_segments() -> None:
    for header in list(_live.values()):
        try:
            _put(header, _PINNED, 1)
        except ValueError:  # closed meanwhile
            pass


def _forget_parent_cache() -> None:
    # The parent's segments are the parent's to refill: a child that
    # refilled them too would overwrite data in flight.
    global _cache, _cache_lock
    _cache, _cache_lock = None, threading.Lock()


os.register_at_fork(before=_pin_live_segments, after_in_child=_forget_parent_cache)
