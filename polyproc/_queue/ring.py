"""The shared-memory ring under every polyproc queue.

A queue is three named files under ``/dev/shm`` (see ``_queue.primitives`` for
the OS pieces and why they were chosen)::

    control  "/ppq_<token>"       4 KiB: counters, three robust mutexes, waiter registry
    data     "/ppq_<token>_data"  the ring of records, a power of two in bytes (grows)
    fifo     "/ppq_<token>_fifo"  a named pipe, only for stdlib code that waits on
                                  ``q._reader`` (see "waitable" below)

    producer process                          consumer process
    ----------------                          ----------------
    Queue.put(obj)                            Queue.get()
      payload = dumps(obj)   (in the caller:    Ring.get_one() -> _take()
        unpicklable -> raises here)               lock GET_LOCK
      Ring.put_one(payload) -> _append()          record at HEAD -> bytes
        lock PUT_LOCK                             commit HEAD += size, NGOT += 1
        write record at TAIL  ---- ring ---->     unlock, wake producers if any wait
        commit TAIL += size, NPUT += 1          loads(bytes)    (outside the lock)
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
  record.  ``primitives.AVAILABLE`` is therefore true on x86-64 Linux only.

* **A redo record for every commit.**  A commit changes two counters
  (``TAIL`` and ``NPUT``, or ``HEAD`` and ``NGOT``).  A process killed
  between the two stores would leave ``qsize()`` wrong forever, so the new
  values are first written to the side's redo slots, in this order::

      P_TAIL = tail;  P_NPUT = nput;  TAIL = tail  (the commit point);  NPUT = nput

  and whoever next locks that side and is told the owner died
  (``EOWNERDEAD``) finishes the commit when ``TAIL == P_TAIL`` and
  ``NPUT != P_NPUT``.  That test needs no flag: a commit always moves
  ``TAIL`` forward, so ``TAIL`` equals ``P_TAIL`` only once this commit
  has stored it, and ``P_NPUT`` was stored before it (stores are seen in
  program order); a commit cut before its ``TAIL`` store left ``P_TAIL``
  ahead of ``TAIL`` and is simply not in the queue.  (A flag raised and
  lowered around the two stores said the same thing for two more stores
  per commit: 5% of a put.)  An item is therefore either fully taken by a
  killed consumer or still in the queue for the others.

* **Unbounded means the ring grows.**  With ``maxsize=0`` (and for items
  bigger than the free space of a bounded queue) ``put`` never waits for a
  consumer: when a record does not fit, the producer takes both locks and
  doubles the data file until it does.  Growing is crash-safe without a
  second file: with capacities that are powers of two, every live byte
  either stays where it is or is *copied* into the new, unused upper part,
  so the old layout is intact until the single store that commits the new
  capacity.  The ring never shrinks; its pages live in ``/dev/shm`` (RAM),
  as the stdlib's unbounded queue buffers in the producer's memory.

* **One code path per side.**  Records are written and their commit made
  in one place, ``_append``, and read and committed in one place,
  ``_take``; ``put_one``/``get_one`` (one item, the common case) are the
  entries of ``put``/``get`` that skip their waiting set-up while the lock
  is free to take, and fall back to them for anything else (a busy lock, a
  full bounded queue, an empty one after a short spin).

* **Waiting** (``_queue.waiters``).  A consumer that finds the queue empty
  first spins briefly, yielding its CPU every few checks (a put usually
  follows within microseconds when the queue is busy, and a futex
  sleep/wake pair costs far more), then registers as a waiter and sleeps
  on the ``NOT_EMPTY`` futex word, which every put's commit changes.
  Producers make the wake-up system call only when a waiter is registered,
  and retire the waiters they wake (``waiters.Waiters.wake``), so that one
  sleep costs one wake-up call, not one per put until the woken process runs.
  Producers of a full bounded queue sleep on ``NOT_FULL`` the same way.
  Waits are cut into slices of ``WAIT_SLICE`` so Ctrl-C is seen promptly
  and a waiter counter left high by a killed process costs only spare
  wake-ups.

* **No lost wake-up.**  A consumer's futex word (``NOT_EMPTY``) is the low
  half of ``TAIL``, so every commit of a put changes it.  A consumer reads
  it *before* it finds the ring empty, registers as a waiter under
  ``GET_LOCK`` and sleeps only while the word still has the value it read
  (the kernel compares it after a full barrier).  A producer moves ``TAIL``
  under ``PUT_LOCK`` and reads the waiter count only after unlocking,
  which is an atomic exchange (a full barrier).  So either the producer
  sees the waiter and wakes it, or the consumer's futex sees the new word
  and does not sleep.  Producers of a full bounded queue wait the same way
  on the low half of ``NGOT`` (``NOT_FULL``): ``NGOT`` is what their
  fullness test reads, and the last counter a get's commit stores (``HEAD``
  would not do: a producer could read the new ``HEAD`` and the old
  ``NGOT``, find the queue full and sleep on a word that no longer
  changes).  A wrap of the low half (2**32 commits or bytes while one
  process goes to sleep) could only cost one slice.  The slices above are
  the safety net.
"""
from __future__ import annotations

import os
import secrets
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from multiprocessing import resource_tracker, util

from . import primitives
from . import waiters as _waiting
from .waiters import Fifo, Waiters, fifo_path, spin_until_differ

__all__ = ["QueueGone", "Ring", "Timeout"]

# --- control segment layout -------------------------------------------------
# u64 slots (index into a u64 view).  Each side's hot fields share a cache
# line of their own (128 bytes apart, beyond the adjacent-line prefetcher), so
# that a producer's commit does not evict the line a consumer is writing.
_MAGIC, _CAP, _MAXSIZE = 0, 1, 2                       # read-mostly
_TAIL, _NPUT, _P_TAIL, _P_NPUT = 16, 17, 19, 20     # put side (18: unused)
_HEAD, _NGOT, _G_HEAD, _G_NGOT = 32, 33, 35, 36     # get side (34: unused)
# 48-51: waiter counts and the FIFO switch; 160-211: the waiter registry
# (both waiters.py's).  Rarely written.
_GET_WAITERS, _PUT_WAITERS = _waiting.GET_WAITERS, _waiting.PUT_WAITERS
_JOIN_WAITERS, _WAITABLE = _waiting.JOIN_WAITERS, _waiting.WAITABLE
_TDONE = 64                                            # JoinableQueue
# u32 futex words (index into a u32 view).  Consumers wait for TAIL to move
# and producers of a full bounded queue for NGOT to: the low halves of those
# counters are their futex words (little-endian), so a commit changes the
# word it must change with the store it makes anyway.
_NOT_EMPTY, _NOT_FULL, _ALL_DONE = 2 * _TAIL, 2 * _NGOT, 2 * 72
# Robust mutexes (byte offsets), one line each.
_PUT_LOCK, _GET_LOCK, _DONE_LOCK = 640, 768, 896
_CONTROL_SIZE = 4096
_MAGIC_VALUE = 0x5050_5155_4555_0001         # "PPQUEU" v1

INITIAL_CAPACITY = 1 << 20
_U32 = 0xFFFF_FFFF
# Bare C calls on the fast paths (see primitives.trylock).
_trylock = primitives.trylock
_unlock = primitives.unlock
_EOWNERDEAD = primitives.EOWNERDEAD


class Timeout(Exception):
    """Internal: a blocking operation ran out of time (mapped to Empty/Full)."""


class QueueGone(Exception):
    """Internal: the queue's shared memory no longer exists (owner gone)."""


# name -> this process's live handle on that queue (see Ring.attach).
_handles: weakref.WeakValueDictionary[str, Ring] = weakref.WeakValueDictionary()


def _lock(addr: int, deadline: float | None) -> int:
    """Lock the mutex at *addr*: 1 if its owner died (repair!), else 0; Timeout at *deadline*."""
    got = primitives.mutex_acquire(addr, deadline)
    if got is None:
        raise Timeout
    return got


def _release(addr: int) -> None:
    rc = _unlock(addr)
    if rc:
        raise primitives.unlock_error(rc)


def _locked_after_death(rc: int, addr: int, repair: Callable[[], None]) -> bool:
    """After ``trylock`` returned *rc* (not 0): True if it locked anyway.

    That is ``EOWNERDEAD``: the previous owner died holding the lock, which
    is ours now; the state it protects is repaired before this returns.
    False when the lock is busy.
    """
    if rc != _EOWNERDEAD:
        return False
    primitives.recover(addr)
    repair()
    return True


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
        base = primitives.address_of(control)
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
        self._waiters = Waiters(self._h, self._f)
        self._fifo = Fifo(name)
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
    def create(cls, maxsize: int) -> Ring:
        name = "/ppq_" + secrets.token_hex(8)
        control_fd, control = primitives.create_segment(name, _CONTROL_SIZE)
        os.close(control_fd)
        try:
            data_fd, _ = primitives.create_segment(name + "_data", INITIAL_CAPACITY)
        except BaseException:
            primitives.unlink_segment(name)
            raise
        try:
            os.mkfifo(fifo_path(name), 0o600)
        except BaseException:
            primitives.unlink_segment(name)
            primitives.unlink_segment(name + "_data")
            raise
        # The tracker removes them if this process dies without doing so
        # (shm_unlink is an unlink under /dev/shm, so it takes the FIFO too).
        for seg in (name, name + "_data", name + "_fifo"):
            resource_tracker.register(seg, "shared_memory")
        h = memoryview(control).cast("Q")
        base = primitives.address_of(control)
        for offset in (_PUT_LOCK, _GET_LOCK, _DONE_LOCK):
            primitives.mutex_init(base + offset)
        h[_CAP] = INITIAL_CAPACITY
        h[_MAXSIZE] = maxsize
        h[_MAGIC] = _MAGIC_VALUE
        h.release()
        ring = _handles[name] = cls(name, control, data_fd, owner=True)
        return ring

    @classmethod
    def attach(cls, name: str) -> Ring:
        """This process's handle on the queue *name*, mapping it if needed.

        One handle per process and queue: a Pool worker that receives the
        same queue in every task maps it once, not once per task.
        """
        ring = _handles.get(name)
        if ring is not None:
            return ring
        import mmap
        try:
            control_fd = primitives.open_segment(name)
        except FileNotFoundError:
            raise QueueGone(name) from None
        try:
            control = mmap.mmap(control_fd, _CONTROL_SIZE)
        finally:
            os.close(control_fd)
        if memoryview(control).cast("Q")[_MAGIC] != _MAGIC_VALUE:
            raise QueueGone(name)       # not (or no longer) one of our queues
        try:
            data_fd = primitives.open_segment(name + "_data")
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
        ngot = h[_G_NGOT] if h[_HEAD] == h[_G_HEAD] else h[_NGOT]
        nput = h[_P_NPUT] if h[_TAIL] == h[_P_TAIL] else h[_NPUT]
        return nput, ngot

    def qsize(self) -> int:
        nput, ngot = self._counts()
        return max(0, nput - ngot)

    def has_items(self) -> bool:
        return self._h[_TAIL] != self._h[_HEAD]

    # ------------------------------------------------------------ put side

    def put_one(self, payload, block: bool, timeout: float | None) -> None:
        """``put((payload,), block, timeout)``, minus its waiting set-up when no wait is needed."""
        lock = self._put_lock
        rc = _trylock(lock)
        if rc and not _locked_after_death(rc, lock, self._repair_put):
            self.put((payload,), block, timeout)        # busy: may have to wait
            return
        try:
            added = self._append((payload,))
        except BaseException:
            self._repair_put()     # Ctrl-C mid-commit: finish it (see _repair_put)
            raise
        finally:
            rc = _unlock(lock)
            if rc:
                raise primitives.unlock_error(rc)
        if not added:                                   # bounded and full
            self.put((payload,), block, timeout)
        elif self._h[_GET_WAITERS]:
            self._wake_getters()

    def put(self, payloads: Sequence, block: bool, timeout: float | None) -> int:
        """Append *payloads* in order; return how many were put.

        Blocks (bounded queues only) until there is room, at most *timeout*
        seconds; raises ``Timeout`` when none could be put in time.
        """
        h = self._h
        done = 0
        deadline = _waiting.deadline(block, timeout)
        registered: tuple[int, int] | None = None
        try:
            while done < len(payloads):
                seq = self._f[_NOT_FULL]
                if _lock(self._put_lock, deadline if block else _soon()):
                    self._repair_put()
                try:
                    if registered is not None:
                        self._waiters.drop(_PUT_WAITERS, registered)
                        registered = None
                    added = self._append(payloads[done:] if done else payloads)
                    done += added
                    if not added:                       # bounded and full
                        if not block or _waiting.expired(deadline):
                            raise Timeout
                        registered = self._waiters.add(_PUT_WAITERS, seq)
                except BaseException:
                    self._repair_put()
                    raise
                finally:
                    _release(self._put_lock)
                if added:
                    # Read GET_WAITERS only after the unlock, a full barrier:
                    # see "no lost wake-up" in the module docstring.
                    if h[_GET_WAITERS]:
                        self._wake_getters()
                else:
                    primitives.futex_wait(self._not_full, seq, _waiting.wait_slice(deadline))
            return done
        except Timeout:
            if done:
                return done
            raise
        finally:
            if registered is not None:
                self._waiters.withdraw(_PUT_WAITERS, registered, self._put_lock,
                                       self._repair_put)

    def _append(self, payloads: Sequence) -> int:
        """Write *payloads* as records and commit them (PUT_LOCK held).

        The one place where records are written and committed.  A bounded
        queue takes as many as it has room for: returns how many it took,
        0 when it is full.  Grows the ring when a record does not fit.
        """
        h = self._h
        count = len(payloads)
        if self.maxsize:
            room = self.maxsize - (h[_NPUT] - h[_NGOT])
            if room < count:
                if room <= 0:
                    return 0
                payloads = payloads[:room]
                count = room
        # Only a PUT_LOCK holder grows the ring, so the capacity cannot
        # change under us from here on (except by our own _grow).
        cap, data, dq = self._m
        if cap != h[_CAP]:
            self._map_data()
            cap, data, dq = self._m
        # Everything below runs once per item put: locals only, and one
        # read of shared memory (TAIL) for the whole batch.
        mask = cap - 1
        tail = h[_TAIL]
        for payload in payloads:
            n = len(payload)
            size = 8 + ((n + 7) & ~7)
            if tail + size - self._head_seen > cap:
                self._head_seen = h[_HEAD]
                if tail + size - self._head_seen > cap:
                    self._grow(tail, size)
                    cap, data, dq = self._m
                    mask = cap - 1
            pos = tail & mask
            dq[pos >> 3] = n
            start = (pos + 8) & mask
            if start + n <= cap:
                data[start:start + n] = payload
            else:                       # runs past the end: continues at 0
                self._put_bytes(tail + 8, payload)
            tail += size
        # The commit, through the redo record, in this order (see module
        # docstring): a kill between the stores of TAIL and NPUT is
        # finished by the next locker, an exception by _repair_put before
        # the lock is released.  Storing TAIL also changes the consumers'
        # futex word (_NOT_EMPTY).
        nput = h[_NPUT] + count
        h[_P_TAIL] = tail
        h[_P_NPUT] = nput
        h[_TAIL] = tail
        h[_NPUT] = nput
        if h[_WAITABLE]:
            self._fifo.signal()
        return count

    def _repair_put(self) -> None:
        """Finish a commit that was cut short (PUT_LOCK held).

        Called by whoever locks after a holder died (``EOWNERDEAD``), and by
        a holder whose own commit an exception (Ctrl-C) interrupted.  Only
        a commit cut between its TAIL and NPUT stores needs finishing; one
        cut before its TAIL store left a record that is simply not in the
        queue.
        """
        h = self._h
        if h[_TAIL] == h[_P_TAIL] and h[_NPUT] != h[_P_NPUT]:
            h[_NPUT] = h[_P_NPUT]
            if h[_WAITABLE]:
                self._fifo.signal()

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
            primitives.reserve(self._fd, new_cap)
            self._map_data(new_cap)
            self._put_bytes(head, live)
            h[_CAP] = new_cap               # the commit point
        finally:
            _release(self._get_lock)

    def _wake_getters(self) -> None:
        self._waiters.wake(self._not_empty, _NOT_EMPTY, _GET_WAITERS, self._get_lock,
                           self._repair_get)

    # ------------------------------------------------------------ get side

    def get_one(self, block: bool, timeout: float | None):
        """``get(1, block, timeout)[0]``, minus its waiting set-up when an item is there."""
        h = self._h
        lock = self._get_lock
        rc = _trylock(lock)
        if rc and not _locked_after_death(rc, lock, self._repair_get):
            return self.get(1, block, timeout)[0]       # busy
        try:
            items = self._take(1)
        except BaseException:
            self._repair_get()
            raise
        finally:
            rc = _unlock(lock)
            if rc:
                raise primitives.unlock_error(rc)
        if not items:                                   # empty: may have to wait
            return self.get(1, block, timeout)[0]
        if h[_PUT_WAITERS]:
            self._wake_putters()
        return items[0]

    def get(self, max_items: int, block: bool, timeout: float | None) -> list[bytes]:
        """Take 1 to *max_items* payloads in order; raise ``Timeout`` if none came."""
        h = self._h
        deadline = _waiting.deadline(block, timeout)
        registered: tuple[int, int] | None = None
        spun = not block
        try:
            while True:
                if not spun and h[_TAIL] == h[_HEAD]:
                    spun = True
                    spin_until_differ(h, _TAIL, _HEAD)
                seq = self._f[_NOT_EMPTY]
                if _lock(self._get_lock, deadline if block else _soon()):
                    self._repair_get()
                try:
                    if registered is not None:
                        self._waiters.drop(_GET_WAITERS, registered)
                        registered = None
                    items = self._take(max_items)
                    if not items:
                        if not block or _waiting.expired(deadline):
                            raise Timeout
                        registered = self._waiters.add(_GET_WAITERS, seq)
                except BaseException:
                    self._repair_get()
                    raise
                finally:
                    _release(self._get_lock)
                if items:
                    if h[_PUT_WAITERS]:
                        self._wake_putters()
                    return items
                primitives.futex_wait(self._not_empty, seq, _waiting.wait_slice(deadline))
        finally:
            if registered is not None:
                self._waiters.withdraw(_GET_WAITERS, registered, self._get_lock,
                                       self._repair_get)

    def _take(self, max_items: int) -> list[bytes]:
        """Copy out and commit up to *max_items* records (GET_LOCK held); [] if empty.

        The one place where records are read and their removal committed.
        """
        h = self._h
        head = h[_HEAD]
        tail = h[_TAIL]
        if head == tail:
            return []
        cap, data, dq = self._m
        if cap != h[_CAP]:
            self._map_data()
            cap, data, dq = self._m
        mask = cap - 1
        items: list[bytes] = []
        while True:
            pos = head & mask
            n = dq[pos >> 3]
            start = (pos + 8) & mask
            if start + n <= cap:
                items.append(data[start:start + n])
            else:                       # runs past the end: continues at 0
                items.append(data[start:cap] + data[0:start + n - cap])
            head += 8 + ((n + 7) & ~7)
            if head == tail or len(items) == max_items:
                break
        # The commit, through the redo record, in this order (see _append).
        ngot = h[_NGOT] + len(items)
        h[_G_HEAD] = head
        h[_G_NGOT] = ngot
        h[_HEAD] = head
        h[_NGOT] = ngot
        return items

    def _repair_get(self) -> None:
        """Finish a commit that was cut short (GET_LOCK held); see ``_repair_put``."""
        h = self._h
        if h[_HEAD] == h[_G_HEAD] and h[_NGOT] != h[_G_NGOT]:
            h[_NGOT] = h[_G_NGOT]

    def _wake_putters(self) -> None:
        self._waiters.wake(self._not_full, _NOT_FULL, _PUT_WAITERS, self._put_lock,
                           self._repair_put)

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
            _release(self._done_lock)
        if finished and waiters:
            primitives.futex_wake(self._all_done)

    def join(self, timeout: float | None = None) -> bool:
        h = self._h
        deadline = _waiting.deadline(True, timeout)
        registered: tuple[int, int] | None = None
        try:
            while True:
                seq = self._f[_ALL_DONE]
                _lock(self._done_lock, None)
                try:
                    if registered is not None:
                        self._waiters.drop(_JOIN_WAITERS, registered)
                        registered = None
                    if h[_TDONE] >= h[_NPUT]:
                        return True
                    if _waiting.expired(deadline):
                        return False
                    registered = self._waiters.add(_JOIN_WAITERS, seq)
                finally:
                    _release(self._done_lock)
                primitives.futex_wait(self._all_done, seq, _waiting.wait_slice(deadline))
        finally:
            if registered is not None:
                self._waiters.withdraw(_JOIN_WAITERS, registered, self._done_lock,
                                       _nothing_to_repair)

    # ------------------------------------------------------------ waitable
    #
    # The queue's FIFO (see waiters.Fifo) costs nothing until a
    # reader asks for it (``make_waitable``): from then on every commit also
    # writes one byte, under PUT_LOCK.  ``take_for_reader`` takes PUT_LOCK
    # too, so between a commit and its byte no reader can look, and it
    # leaves exactly one byte in the FIFO when items remain: the FIFO is
    # readable exactly while the queue is not empty, as long as items leave
    # through the reader (items taken with plain ``get`` may leave a stale
    # byte; ``poll`` and ``recv`` tolerate that).

    def make_waitable(self) -> int:
        """Switch the FIFO on; return this handle's descriptor of it."""
        h = self._h
        if not h[_WAITABLE]:
            if _lock(self._put_lock, None):
                self._repair_put()
            try:
                h[_WAITABLE] = 1
                if h[_TAIL] != h[_HEAD]:
                    self._fifo.signal()
            finally:
                _release(self._put_lock)
        return self._fifo.fileno()

    def take_for_reader(self):
        """One payload for ``QueueReader.recv``, keeping the FIFO level-true."""
        payload = self._rearm(take=True)
        if payload is None:             # a stale byte: wait for a real item
            payload = self.get_one(True, None)
            self._rearm(take=False)
        return payload

    def _rearm(self, take: bool):
        """Under PUT_LOCK: empty the FIFO, take one item if *take*, signal if items remain."""
        h = self._h
        if _lock(self._put_lock, None):
            self._repair_put()
        try:
            self._fifo.drain()
            payload = None
            if take:
                try:
                    payload = self.get_one(False, None)
                except Timeout:
                    pass
            if h[_TAIL] != h[_HEAD]:
                self._fifo.signal()
            return payload
        finally:
            _release(self._put_lock)

    # ------------------------------------------------------------ helpers

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


def _soon() -> float:
    # A non-blocking call still waits for a lock held for microseconds, but
    # gives up after a second rather than hang behind a stuck holder.
    return time.monotonic() + 1.0


def _nothing_to_repair() -> None:
    pass


def _remove_segments(names: Iterable[str], owner_pid: int) -> None:
    """Finalizer of the owning handle: unlink the queue's files."""
    if os.getpid() != owner_pid:   # a forked child inherited the handle
        return
    for name in names:
        primitives.unlink_segment(name)
        try:
            resource_tracker.unregister(name, "shared_memory")
        except Exception:
            pass
