"""The shared-memory ring under every polyproc queue.

A queue is three named files under ``/dev/shm`` (see ``_queue_shm`` for
the OS pieces and why they were chosen)::

    control  "/ppq_<token>"       4 KiB: counters, three robust mutexes, three futex words
    data     "/ppq_<token>_data"  the ring of records, a power of two in bytes (grows)
    fifo     "/ppq_<token>_fifo"  a named pipe, only for stdlib code that waits on
                                  ``q._reader`` (see "waitable" below)

    producer process                          consumer process
    ----------------                          ----------------
    put(obj)                                  get()
      payload = dumps(obj)   (in the caller:    lock GET_LOCK
        unpicklable -> raises here)               record at HEAD -> bytes
      lock PUT_LOCK                               commit HEAD += size, NGOT += 1
      write record at TAIL  -------- ring ------>  NOT_FULL += 1
      commit TAIL += size, NPUT += 1            unlock, wake producers if any wait
      NOT_EMPTY += 1                            loads(bytes)    (outside the lock)
      unlock, wake consumers if any wait

A *record* is an 8-byte length followed by the payload, padded to 8 bytes;
a payload that runs past the end of the ring continues at its start.
``HEAD`` and ``TAIL`` are byte offsets that only ever grow; a record's
place in the ring is ``offset % capacity``.

Design decisions and their trade-offs
-------------------------------------
* **No feeder thread.**  ``put`` writes the record into shared memory
  before it returns.  So an item put is in the queue even if its process
  exits (or is SIGKILLed) a moment later, joining a process that put items
  cannot deadlock (the stdlib's feeder-thread trap), and an object that
  cannot be pickled raises in the caller (the stdlib's feeder thread drops
  it silently, gh-79423).  ``close``/``join_thread``/``cancel_join_thread``
  remain valid calls that have nothing left to flush.

* **Two locks, one per side.**  Producers serialise on ``PUT_LOCK`` and
  consumers on ``GET_LOCK``: a producer only moves ``TAIL`` and a consumer
  only moves ``HEAD``, so the two sides never wait for each other in the
  common case.  A third lock, ``DONE_LOCK``, serves ``JoinableQueue``.
  The only step that takes both is growing the ring (lock order: put, then
  get).

* **Publish last.**  A record becomes visible when ``TAIL`` moves past it,
  which happens after the record is completely written: a reader never
  sees a torn or partial message, and a producer killed mid-write leaves
  nothing behind but unreachable bytes.  This relies on stores from one
  process becoming visible to others in program order, which x86-64
  guarantees (TSO); a producer and a consumer hold different locks, so on
  a weakly ordered CPU (arm64) a reader could see ``TAIL`` before the
  record.  ``_queue_shm.AVAILABLE`` is therefore true on x86-64 Linux only.

* **A redo record for every commit.**  A commit changes two counters
  (``TAIL`` and ``NPUT``, or ``HEAD`` and ``NGOT``).  A process killed
  between the two stores would leave ``qsize()`` wrong forever, so the new
  values are first written to the side's redo slots and a flag is raised;
  whoever next locks that side and is told the owner died
  (``EOWNERDEAD``) finishes the commit from the redo slots.  An item is
  therefore either fully taken by a killed consumer or still in the queue
  for the others.

* **Unbounded means the ring grows.**  With ``maxsize=0`` (and for items
  bigger than the free space of a bounded queue) ``put`` never waits for a
  consumer: when a record does not fit, the producer takes both locks and
  doubles the data file until it does.  Growing is crash-safe without a
  second file: with capacities that are powers of two, every live byte
  either stays where it is or is *copied* into the new, unused upper part,
  so the old layout is intact until the single store that commits the new
  capacity.  The ring never shrinks; its pages live in ``/dev/shm`` (RAM),
  as the stdlib's unbounded queue buffers in the producer's memory.

* **Waiting.**  A consumer that finds the queue empty first spins briefly,
  yielding its CPU every few checks (a put usually follows within
  microseconds when the queue is busy, and a futex sleep/wake pair costs
  far more), then registers as a waiter and
  sleeps on the ``NOT_EMPTY`` futex word.  Producers bump that word on
  every put and make the wake-up system call only when a waiter is
  registered.  Producers of a full bounded queue sleep on ``NOT_FULL`` the
  same way.  Waits are cut into slices of ``WAIT_SLICE`` so Ctrl-C is seen
  promptly and a waiter counter left high by a killed process costs only
  spare wake-ups.

* **No lost wake-up.**  A consumer reads the ``NOT_EMPTY`` word *before* it
  finds the ring empty, registers as a waiter under ``GET_LOCK`` and
  sleeps only while the word still has the value it read (the kernel
  compares it after a full barrier).  A producer bumps the word under
  ``PUT_LOCK`` after moving ``TAIL`` and reads the waiter count only after
  unlocking, which is an atomic exchange (a full barrier).  So either the
  producer sees the waiter and wakes it, or the consumer's futex sees the
  new word and does not sleep.  The slices above are the safety net.
"""
from __future__ import annotations

import os
import secrets
import time
import weakref
from multiprocessing import resource_tracker, util
from typing import Iterable, Sequence

from . import _queue_shm as _shm
from ._queue_shm import WAIT_SLICE

__all__ = ["Ring", "Timeout", "QueueGone"]

# --- control segment layout -------------------------------------------------
# u64 slots (index into a u64 view).  Each side's hot fields share a cache
# line of their own (128 bytes apart, beyond the adjacent-line prefetcher), so
# that a producer's commit does not evict the line a consumer is writing.
_MAGIC, _CAP, _MAXSIZE = 0, 1, 2                       # read-mostly
_TAIL, _NPUT, _P_FLAG, _P_TAIL, _P_NPUT = 16, 17, 18, 19, 20   # put side
_HEAD, _NGOT, _G_FLAG, _G_HEAD, _G_NGOT = 32, 33, 34, 35, 36   # get side
_GET_WAITERS, _PUT_WAITERS, _JOIN_WAITERS = 48, 49, 50        # rarely written
_WAITABLE = 51          # someone waits on the queue's FIFO (see QueueReader)
# Waiter registry (see Ring._add_waiter): _SLOTS pids per waiter kind, in
# the order GET_, PUT_, JOIN_WAITERS, then one overflow count per kind.
_SLOTS = 16
_SLOTS_BASE = 160
_OVERFLOW = _SLOTS_BASE + 3 * _SLOTS
_IDLE_WAKES_BEFORE_RECOUNT = 64
_TDONE = 64                                            # JoinableQueue
# u32 futex words (index into a u32 view), each on its side's line.
_NOT_EMPTY, _NOT_FULL, _ALL_DONE = 2 * 24, 2 * 40, 2 * 72
# Robust mutexes (byte offsets), one line each.
_PUT_LOCK, _GET_LOCK, _DONE_LOCK = 640, 768, 896
_CONTROL_SIZE = 4096
_MAGIC_VALUE = 0x5050_5155_4555_0001         # "PPQUEU" v1

INITIAL_CAPACITY = 1 << 20
# A consumer that finds the queue empty checks again _SPIN times before it
# sleeps, giving its CPU away (sched_yield) every _YIELD_EVERY checks: on a
# machine with more processes than cores the producer it waits for may be
# queued behind it on the same core.  Measured on the 2-core machine with
# other work running: pure spinning lost up to 2x against yielding.
_SPIN = 400
_YIELD_EVERY = 20
_yield = os.sched_yield
_U32 = 0xFFFF_FFFF


class Timeout(Exception):
    """Internal: a blocking operation ran out of time (mapped to Empty/Full)."""


class QueueGone(Exception):
    """Internal: the queue's shared memory no longer exists (owner gone)."""


# name -> this process's live handle on that queue (see Ring.attach).
_handles: "weakref.WeakValueDictionary[str, Ring]" = weakref.WeakValueDictionary()

_try = _shm.mutex_try
_release = _shm.mutex_release


def _lock(addr: int, deadline: float | None) -> int:
    got = _shm.mutex_acquire(addr, deadline)
    if got is None:
        raise Timeout
    return got


class Ring:
    """One process's handle on a queue's shared memory.

    A process has one handle per queue (``attach`` reuses a live one); it
    maps the queue's files by name.  The handle that created the files
    owns them and removes them when it is garbage-collected or its process
    exits (``_remove_segments``).
    """

    def __init__(self, name: str, control, data_fd: int, owner: bool):
        self.name = name
        self._control = control
        self._h = memoryview(control).cast("Q")
        self._f = memoryview(control).cast("I")
        base = _shm.address_of(control)
        self._put_lock = base + _PUT_LOCK
        self._get_lock = base + _GET_LOCK
        self._done_lock = base + _DONE_LOCK
        self._not_empty = base + _NOT_EMPTY * 4
        self._not_full = base + _NOT_FULL * 4
        self._all_done = base + _ALL_DONE * 4
        self._fd = data_fd
        self.maxsize = self._h[_MAXSIZE]
        # HEAD as this process last read it: HEAD only grows, so a stale
        # value only underestimates the free space; the producer re-reads it
        # (a cache miss: consumers write that line) only when short of room.
        self._head_seen = 0
        self._fifo_fd: int | None = None
        self._idle_wakes = 0
        self._map_data()
        weakref.finalize(self, os.close, data_fd)
        if owner:
            names = (name, name + "_data", name + "_fifo")
            # A negative exit priority: at exit, multiprocessing runs it only
            # after it has joined the non-daemonic children, which may still
            # be using the queue (or just be about to unpickle it).
            util.Finalize(self, _remove_segments, args=(names, os.getpid()),
                          exitpriority=-1)

    # ------------------------------------------------------------ lifetime

    @classmethod
    def create(cls, maxsize: int) -> "Ring":
        name = "/ppq_" + secrets.token_hex(8)
        control_fd, control = _shm.create_segment(name, _CONTROL_SIZE)
        os.close(control_fd)
        try:
            data_fd, _ = _shm.create_segment(name + "_data", INITIAL_CAPACITY)
        except BaseException:
            _shm.unlink_segment(name)
            raise
        try:
            os.mkfifo(_fifo_path(name), 0o600)
        except BaseException:
            _shm.unlink_segment(name)
            _shm.unlink_segment(name + "_data")
            raise
        # The tracker removes them if this process dies without doing so
        # (shm_unlink is an unlink under /dev/shm, so it takes the FIFO too).
        for seg in (name, name + "_data", name + "_fifo"):
            resource_tracker.register(seg, "shared_memory")
        h = memoryview(control).cast("Q")
        base = _shm.address_of(control)
        for offset in (_PUT_LOCK, _GET_LOCK, _DONE_LOCK):
            _shm.mutex_init(base + offset)
        h[_CAP] = INITIAL_CAPACITY
        h[_MAXSIZE] = maxsize
        h[_MAGIC] = _MAGIC_VALUE
        h.release()
        ring = _handles[name] = cls(name, control, data_fd, owner=True)
        return ring

    @classmethod
    def attach(cls, name: str) -> "Ring":
        """This process's handle on the queue *name*, mapping it if needed.

        One handle per process and queue: a Pool worker that receives the
        same queue in every task maps it once, not once per task.
        """
        ring = _handles.get(name)
        if ring is not None:
            return ring
        import mmap
        try:
            control_fd = _shm.open_segment(name)
        except FileNotFoundError:
            raise QueueGone(name) from None
        try:
            control = mmap.mmap(control_fd, _CONTROL_SIZE)
        finally:
            os.close(control_fd)
        if memoryview(control).cast("Q")[_MAGIC] != _MAGIC_VALUE:
            raise QueueGone(name)       # not (or no longer) one of our queues
        try:
            data_fd = _shm.open_segment(name + "_data")
        except FileNotFoundError:
            raise QueueGone(name) from None
        ring = _handles[name] = cls(name, control, data_fd, owner=False)
        return ring

    def __reduce__(self):
        return (Ring.attach, (self.name,))

    def _map_data(self, cap: int | None = None) -> None:
        """(Re)map the data file at the committed capacity, or at *cap*."""
        import mmap
        if cap is None:
            cap = self._h[_CAP]
        data = mmap.mmap(self._fd, cap)
        # One tuple, replaced whole: a thread that took it keeps a mapping
        # and a capacity that belong together even if another thread of
        # this process remaps meanwhile.
        self._m = (cap, data, memoryview(data).cast("Q"))

    # ------------------------------------------------------------ counters

    def _counts(self) -> tuple[int, int]:
        # Where a commit is under way (or was cut short by a kill that the
        # next locker will repair), its redo slots hold the values it is
        # committing: count those, so the answer does not depend on whether
        # the repair has happened yet.
        h = self._h
        ngot = h[_G_NGOT] if h[_G_FLAG] else h[_NGOT]
        nput = h[_P_NPUT] if h[_P_FLAG] else h[_NPUT]
        return nput, ngot

    def qsize(self) -> int:
        nput, ngot = self._counts()
        return max(0, nput - ngot)

    # ------------------------------------------------------------ fast paths
    #
    # One item, lock free to take, room in the ring: the common case, written
    # out flat because every attribute lookup and call shows in msgs/s.
    # Anything else (busy lock, full, ring to grow or remap) goes the general
    # way below, which handles it all.

    def put_one(self, payload, block: bool, timeout: float | None) -> None:
        got = _try(self._put_lock)
        if got is None:
            self.put((payload,), block, timeout)
            return
        h = self._h
        done = False
        try:
            if got:
                self._repair_put()
            cap, data, dq = self._m
            maxsize = self.maxsize
            if h[_CAP] == cap and not (maxsize and h[_NPUT] - h[_NGOT] >= maxsize):
                tail = h[_TAIL]
                n = len(payload)
                size = 8 + ((n + 7) & ~7)
                if tail + size - self._head_seen > cap:
                    self._head_seen = h[_HEAD]
                if tail + size - self._head_seen <= cap:
                    pos = tail & (cap - 1)
                    dq[pos >> 3] = n
                    start = (pos + 8) & (cap - 1)
                    if start + n <= cap:
                        data[start:start + n] = payload
                    else:
                        self._put_bytes(tail + 8, payload)
                    tail += size
                    nput = h[_NPUT] + 1
                    h[_P_TAIL] = tail
                    h[_P_NPUT] = nput
                    h[_P_FLAG] = 1
                    h[_TAIL] = tail
                    h[_NPUT] = nput
                    h[_P_FLAG] = 0
                    self._f[_NOT_EMPTY] = (self._f[_NOT_EMPTY] + 1) & _U32
                    done = True
                    if h[_WAITABLE]:
                        self._signal()
        except BaseException:
            self._repair_put()     # Ctrl-C mid-commit: finish it (see _repair_put)
            raise
        finally:
            _release(self._put_lock)
        if not done:
            self.put((payload,), block, timeout)
        elif h[_GET_WAITERS]:
            self._wake(self._not_empty, self._get_lock, _GET_WAITERS)

    def get_one(self, block: bool, timeout: float | None):
        got = _try(self._get_lock)
        if got is None:
            return self.get(1, block, timeout)[0]
        h = self._h
        payload = None
        try:
            if got:
                self._repair_get()
            head = h[_HEAD]
            cap, data, dq = self._m
            if head != h[_TAIL] and h[_CAP] == cap:
                pos = head & (cap - 1)
                n = dq[pos >> 3]
                start = (pos + 8) & (cap - 1)
                if start + n <= cap:
                    payload = data[start:start + n]
                else:
                    payload = self._read(head + 8, n)
                head += 8 + ((n + 7) & ~7)
                ngot = h[_NGOT] + 1
                h[_G_HEAD] = head
                h[_G_NGOT] = ngot
                h[_G_FLAG] = 1
                h[_HEAD] = head
                h[_NGOT] = ngot
                h[_G_FLAG] = 0
                self._f[_NOT_FULL] = (self._f[_NOT_FULL] + 1) & _U32
        except BaseException:
            self._repair_get()
            raise
        finally:
            _release(self._get_lock)
        if payload is None:
            return self.get(1, block, timeout)[0]
        if h[_PUT_WAITERS]:
            self._wake(self._not_full, self._put_lock, _PUT_WAITERS)
        return payload

    # ------------------------------------------------------------ put side

    def put(self, payloads: Sequence, block: bool, timeout: float | None) -> int:
        """Append *payloads* in order; return how many were put.

        Blocks (bounded queues only) until there is room, at most *timeout*
        seconds; raises ``Timeout`` when none could be put in time.
        """
        h = self._h
        done = 0
        deadline = _deadline(block, timeout)
        registered: int | None = None
        try:
            while True:
                seq = self._f[_NOT_FULL]
                lock_deadline = deadline if block else time.monotonic() + 1.0
                if _lock(self._put_lock, lock_deadline):
                    self._repair_put()
                try:
                    if registered is not None:
                        self._drop_waiter(_PUT_WAITERS, registered)
                        registered = None
                    room = len(payloads) - done
                    if self.maxsize:
                        room = min(room, self.maxsize - (h[_NPUT] - h[_NGOT]))
                    if room > 0:
                        self._write(payloads, done, done + room)
                        done += room
                    elif not block or _expired(deadline):
                        raise Timeout
                    else:
                        registered = self._add_waiter(_PUT_WAITERS)
                except BaseException:
                    self._repair_put()
                    raise
                finally:
                    _shm.mutex_release(self._put_lock)
                # Read GET_WAITERS only after the unlock, a full barrier: see
                # "no lost wake-up" in the module docstring.
                if room > 0 and h[_GET_WAITERS]:
                    self._wake(self._not_empty, self._get_lock, _GET_WAITERS)
                if done == len(payloads):
                    return done
                if room <= 0:
                    _shm.futex_wait(self._not_full, seq, _slice(deadline))
        except Timeout:
            if done:
                return done
            raise
        finally:
            if registered is not None:
                self._unregister(self._put_lock, _PUT_WAITERS, registered, self._repair_put)

    def _write(self, payloads: Sequence, first: int, stop: int) -> None:
        """Write records ``payloads[first:stop]`` and commit them (PUT_LOCK held)."""
        h = self._h
        tail = h[_TAIL]
        for i in range(first, stop):
            payload = payloads[i]
            n = len(payload)
            size = 8 + ((n + 7) & ~7)
            if self._m[0] != h[_CAP]:
                self._map_data()
            if tail + size - self._head_seen > self._m[0]:
                self._head_seen = h[_HEAD]
            if tail + size - self._head_seen > self._m[0]:
                self._grow(tail, size)
            cap, data, dq = self._m
            pos = tail & (cap - 1)
            dq[pos >> 3] = n
            start = (pos + 8) & (cap - 1)
            end = start + n
            if end <= cap:
                data[start:end] = payload
            else:
                cut = cap - start
                view = memoryview(payload)
                data[start:cap] = view[:cut]
                data[0:n - cut] = view[cut:]
            tail += size
        nput = h[_NPUT] + (stop - first)
        # Commit through the redo record (see module docstring).
        h[_P_TAIL] = tail
        h[_P_NPUT] = nput
        h[_P_FLAG] = 1
        h[_TAIL] = tail
        h[_NPUT] = nput
        h[_P_FLAG] = 0
        self._f[_NOT_EMPTY] = (self._f[_NOT_EMPTY] + 1) & _U32
        if h[_WAITABLE]:
            self._signal()

    def _repair_put(self) -> None:
        """Finish a commit that was cut short (PUT_LOCK held).

        Called by whoever locks after a holder died (``EOWNERDEAD``), and by
        a holder whose own commit an exception (Ctrl-C) interrupted.  With
        the flag down there is nothing to finish: an uncommitted record is
        simply not in the queue.
        """
        h = self._h
        if h[_P_FLAG]:
            h[_TAIL] = h[_P_TAIL]
            h[_NPUT] = h[_P_NPUT]
            h[_P_FLAG] = 0
            if h[_WAITABLE]:
                self._signal()

    def _grow(self, tail: int, size: int) -> None:
        """Enlarge the ring so a *size*-byte record fits at *tail* (PUT_LOCK held)."""
        h = self._h
        if _lock(self._get_lock, None):
            self._repair_get()
        try:
            if self._m[0] != h[_CAP]:
                self._map_data()
            head = h[_HEAD]
            used = tail - head
            old_cap = self._m[0]
            if used + size <= old_cap:      # consumers made room meanwhile
                return
            new_cap = old_cap * 2
            while new_cap < used + size:
                new_cap *= 2
            live = self._read(head, used)
            _shm.reserve(self._fd, new_cap)
            self._map_data(new_cap)
            self._put_bytes(head, live)
            h[_CAP] = new_cap               # the commit point
        finally:
            _shm.mutex_release(self._get_lock)

    # ------------------------------------------------------------ get side

    def get(self, max_items: int, block: bool, timeout: float | None) -> list[bytes]:
        """Take 1 to *max_items* payloads in order; raise ``Timeout`` if none came."""
        h = self._h
        deadline = _deadline(block, timeout)
        registered: int | None = None
        spun = not block
        try:
            while True:
                if not spun and h[_TAIL] == h[_HEAD]:
                    spun = True
                    for i in range(_SPIN):
                        if h[_TAIL] != h[_HEAD]:
                            break
                        if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                            _yield()
                seq = self._f[_NOT_EMPTY]
                lock_deadline = deadline if block else time.monotonic() + 1.0
                if _lock(self._get_lock, lock_deadline):
                    self._repair_get()
                items = None
                try:
                    if registered is not None:
                        self._drop_waiter(_GET_WAITERS, registered)
                        registered = None
                    if h[_TAIL] != h[_HEAD]:
                        items = self._take(max_items)
                    elif not block or _expired(deadline):
                        raise Timeout
                    else:
                        registered = self._add_waiter(_GET_WAITERS)
                except BaseException:
                    self._repair_get()
                    raise
                finally:
                    _shm.mutex_release(self._get_lock)
                if items is not None:
                    if h[_PUT_WAITERS]:
                        self._wake(self._not_full, self._put_lock, _PUT_WAITERS)
                    return items
                _shm.futex_wait(self._not_empty, seq, _slice(deadline))
        finally:
            if registered is not None:
                self._unregister(self._get_lock, _GET_WAITERS, registered, self._repair_get)

    def _take(self, max_items: int) -> list[bytes]:
        """Copy out and commit up to *max_items* records (GET_LOCK held)."""
        h = self._h
        if self._m[0] != h[_CAP]:
            self._map_data()
        cap, data, dq = self._m
        head, tail = h[_HEAD], h[_TAIL]
        items = []
        while head != tail and len(items) < max_items:
            pos = head & (cap - 1)
            n = dq[pos >> 3]
            items.append(self._read(head + 8, n))
            head += 8 + ((n + 7) & ~7)
        ngot = h[_NGOT] + len(items)
        h[_G_HEAD] = head
        h[_G_NGOT] = ngot
        h[_G_FLAG] = 1
        h[_HEAD] = head
        h[_NGOT] = ngot
        h[_G_FLAG] = 0
        self._f[_NOT_FULL] = (self._f[_NOT_FULL] + 1) & _U32
        return items

    def _repair_get(self) -> None:
        h = self._h
        if h[_G_FLAG]:
            h[_HEAD] = h[_G_HEAD]
            h[_NGOT] = h[_G_NGOT]
            h[_G_FLAG] = 0

    # ------------------------------------------------------------ joinable

    def task_done(self) -> None:
        h = self._h
        _lock(self._done_lock, None)
        try:
            if h[_TDONE] >= h[_NPUT]:
                raise ValueError("task_done() called too many times")
            h[_TDONE] += 1
            finished = h[_TDONE] == h[_NPUT]
            if finished:
                self._f[_ALL_DONE] = (self._f[_ALL_DONE] + 1) & _U32
            waiters = h[_JOIN_WAITERS]
        finally:
            _shm.mutex_release(self._done_lock)
        if finished and waiters:
            _shm.futex_wake(self._all_done)

    def join(self, timeout: float | None = None) -> bool:
        h = self._h
        deadline = _deadline(True, timeout)
        registered: int | None = None
        try:
            while True:
                seq = self._f[_ALL_DONE]
                _lock(self._done_lock, None)
                try:
                    if registered is not None:
                        self._drop_waiter(_JOIN_WAITERS, registered)
                        registered = None
                    if h[_TDONE] >= h[_NPUT]:
                        return True
                    if _expired(deadline):
                        return False
                    registered = self._add_waiter(_JOIN_WAITERS)
                finally:
                    _shm.mutex_release(self._done_lock)
                _shm.futex_wait(self._all_done, seq, _slice(deadline))
        finally:
            if registered is not None:
                self._unregister(self._done_lock, _JOIN_WAITERS, registered, lambda: None)

    # ------------------------------------------------------------ waitable
    #
    # Stdlib code waits on ``q._reader`` with ``multiprocessing.connection.
    # wait()`` (``concurrent.futures.ProcessPoolExecutor`` does so on its
    # result queue), which needs a file descriptor that is readable while the
    # queue holds items.  The queue's FIFO ("/dev/shm/<name>_fifo", opened by
    # name, so any process can write to it) is that descriptor.  It costs
    # nothing until a reader asks for it (``make_waitable``): from then on
    # every commit also writes one byte, under PUT_LOCK.  ``take_for_reader``
    # takes PUT_LOCK too, so between a commit and its byte no reader can
    # look, and it leaves exactly one byte in the FIFO when items remain:
    # the FIFO is readable exactly while the queue is not empty, as long as
    # items leave through the reader (items taken with plain ``get`` may
    # leave a stale byte; ``poll`` and ``recv`` tolerate that).

    def make_waitable(self) -> int:
        """Switch the FIFO on; return this handle's descriptor of it."""
        h = self._h
        if not h[_WAITABLE]:
            if _lock(self._put_lock, None):
                self._repair_put()
            try:
                h[_WAITABLE] = 1
                if h[_TAIL] != h[_HEAD]:
                    self._signal()
            finally:
                _release(self._put_lock)
        return self._fifo()

    def take_for_reader(self):
        """One payload for ``QueueReader.recv``, keeping the FIFO level-true."""
        payload = self._rearm(take=True)
        if payload is None:             # a stale byte: wait for a real item
            payload = self.get_one(True, None)
            self._rearm(take=False)
        return payload

    def has_items(self) -> bool:
        return self._h[_TAIL] != self._h[_HEAD]

    def _rearm(self, take: bool):
        h = self._h
        if _lock(self._put_lock, None):
            self._repair_put()
        try:
            try:
                while os.read(self._fifo(), 4096):
                    pass
            except BlockingIOError:
                pass
            payload = None
            if take:
                try:
                    payload = self.get_one(False, None)
                except Timeout:
                    pass
            if h[_TAIL] != h[_HEAD]:
                self._signal()
            return payload
        finally:
            _release(self._put_lock)

    def _fifo(self) -> int:
        if self._fifo_fd is None:
            fd = os.open(_fifo_path(self.name), os.O_RDWR | os.O_NONBLOCK)
            weakref.finalize(self, os.close, fd)
            self._fifo_fd = fd
        return self._fifo_fd

    def _signal(self) -> None:
        try:
            os.write(self._fifo(), b"\0")
        except BlockingIOError:         # full: readable already
            pass

    # ------------------------------------------------------------ helpers

    def _unregister(self, lock: int, kind: int, token: int, repair) -> None:
        # Left a wait by an exception (Ctrl-C): take our waiter mark back.
        if _lock(lock, None):
            repair()
        try:
            self._drop_waiter(kind, token)
        finally:
            _shm.mutex_release(lock)

    # Waiter registry.  Notifiers read only the count (``kind``: GET_, PUT_
    # or JOIN_WAITERS), to skip the wake-up system call when nobody sleeps.
    # A count kept by increments would stay high forever after a waiter is
    # SIGKILLed, and every put would then pay a useless system call (+1 µs,
    # 60% of a put).  So each waiter writes its pid into a slot, and the
    # count is recomputed from the slots, dropping dead pids, every time a
    # waiter comes or goes (under the side's lock, off the fast path).  More
    # than _SLOTS waiters of one kind are counted in an overflow word
    # without that healing.

    def _wake(self, futex: int, lock: int, kind: int) -> None:
        """Wake the waiters of *kind*; now and then heal a count nobody answers.

        A registered waiter may be between two slices of its wait, so one
        wake-up that finds nobody proves nothing; many in a row, with no
        waiter coming or going meanwhile, mean the count is probably stale
        (its waiter was killed): recount, if the lock is free right now.
        """
        if _shm.futex_wake(futex):
            self._idle_wakes = 0
            return
        self._idle_wakes += 1
        if self._idle_wakes >= _IDLE_WAKES_BEFORE_RECOUNT:
            self._idle_wakes = 0
            got = _try(lock)
            if got is not None:
                try:
                    if got:             # its holder died: repair first
                        (self._repair_get if lock == self._get_lock
                         else self._repair_put)()
                    self._recount(kind)
                finally:
                    _release(lock)

    def _add_waiter(self, kind: int) -> int:
        """Register this thread as a waiter (lock of that side held); return its slot."""
        h = self._h
        base = _SLOTS_BASE + _SLOTS * (kind - _GET_WAITERS)
        me = os.getpid()
        token = -1
        for slot in range(base, base + _SLOTS):
            if h[slot] == 0:
                h[slot] = me
                token = slot
                break
        if token < 0:
            h[_OVERFLOW + kind - _GET_WAITERS] += 1
        self._recount(kind)
        return token

    def _drop_waiter(self, kind: int, token: int) -> None:
        h = self._h
        if token >= 0:
            h[token] = 0
        else:
            overflow = _OVERFLOW + kind - _GET_WAITERS
            h[overflow] = max(0, h[overflow] - 1)
        self._recount(kind)

    def _recount(self, kind: int) -> None:
        h = self._h
        base = _SLOTS_BASE + _SLOTS * (kind - _GET_WAITERS)
        me = os.getpid()
        count = h[_OVERFLOW + kind - _GET_WAITERS]
        for slot in range(base, base + _SLOTS):
            pid = h[slot]
            if pid and pid != me and not _alive(pid):
                h[slot] = pid = 0
            count += pid != 0
        h[kind] = count

    def _read(self, offset: int, n: int) -> bytes:
        cap, data, _ = self._m
        start = offset & (cap - 1)
        end = start + n
        if end <= cap:
            return data[start:end]
        return data[start:cap] + data[0:end - cap]

    def _put_bytes(self, offset: int, data: bytes) -> None:
        cap, ring, _ = self._m
        start = offset & (cap - 1)
        end = start + len(data)
        if end <= cap:
            ring[start:end] = data
        else:
            cut = cap - start
            ring[start:cap] = data[:cut]
            ring[0:end - cap] = data[cut:]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # exists, belongs to someone else
        return True
    return True


def _fifo_path(name: str) -> str:
    return "/dev/shm" + name + "_fifo"


def _deadline(block: bool, timeout: float | None) -> float | None:
    if not block or timeout is None:
        return None
    return time.monotonic() + max(0.0, timeout)


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _slice(deadline: float | None) -> float:
    if deadline is None:
        return WAIT_SLICE
    return min(WAIT_SLICE, deadline - time.monotonic())


def _remove_segments(names: Iterable[str], owner_pid: int) -> None:
    """Finalizer of the owning handle: unlink the queue's files."""
    if os.getpid() != owner_pid:   # a forked child inherited the handle
        return
    for name in names:
        _shm.unlink_segment(name)
        try:
            resource_tracker.unregister(name, "shared_memory")
        except Exception:
            pass
