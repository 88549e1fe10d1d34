"""Server-side types of ``SyncManager`` that survive a client's death.

The stdlib's manager keeps plain ``queue.Queue`` and ``threading.Lock``
objects in its server.  A call from a client runs in that client's server
thread; when the client dies in the middle of a blocking call, the thread
goes on waiting on its behalf, and two things go wrong:

* a dead consumer blocked in ``Queue.get`` takes the next item anyone puts
  and then fails to deliver it: the item is lost;
* a dead client blocked in ``Lock.acquire`` eventually acquires the lock
  and never releases it, and a client that died *holding* a lock holds it
  forever: every other client hangs.

The types here are the stdlib's (``queue.Queue``, ``threading.Lock``,
``RLock``, ``Condition``, ``Semaphore``, ``BoundedSemaphore``: the same
methods, the same meaning for live clients)
with three additions that use the connection the call came from
(``current_connection()``, set by the server for each call):

* a blocking wait is cut into slices of ``_SLICE`` seconds; between slices
  it checks that the caller's connection is still open, and gives up
  (``ClientGone``) when it is not;
* what a call took is given back when its reply cannot be delivered
  (the item goes back to the *front* of the queue, the lock is released);
* a lock (a ``Condition``'s own lock included) still held when its
  holder's process crashed (killed by a signal: its lifeline closed
  without a ``Goodbye``) is released, as a robust mutex is when its owner
  dies.  (The state the lock protected may be half-updated; the
  alternative is a hang.)  A holder that exits normally keeps it, as in
  the stdlib: another client may release it.

Outside a server call (``current_connection()`` is None) they behave
exactly as their bases.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any

from .server import ClientGone, current_connection

__all__ = ["ServerQueue", "ServerLock", "ServerRLock", "ServerSemaphore",
           "ServerBoundedSemaphore", "ServerCondition"]

_SLICE = 0.2     # seconds between liveness checks of a waiting caller


def _sliced_wait(wait_once, block: bool, timeout: float | None) -> Any:
    """Call ``wait_once(slice)`` until it succeeds, the timeout passes or
    the caller's connection is gone.  ``wait_once`` returns ``(True, v)`` on
    success, ``(False, None)`` when the slice ran out."""
    conn = current_connection()
    if conn is None or not block:
        return None
    deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
    while True:
        step = _SLICE
        if deadline is not None:
            step = min(step, deadline - time.monotonic())
            if step <= 0:
                return (False, None)
        done, value = wait_once(step)
        if done:
            return (True, value)
        if not conn.peer_alive():
            raise ClientGone("the caller's connection closed while it waited")


class ServerQueue(queue.Queue):
    """``queue.Queue`` whose blocking ``get`` gives up for a dead caller and
    whose undelivered items go back to the front of the queue."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        # queue.Queue.get, with the slicing written into its loop: this is
        # the hot path of every managed queue, and a generic helper (or an
        # Empty raised and caught for a fast path) measurably slowed it.
        conn = current_connection()
        if conn is None:
            return queue.Queue.get(self, block, timeout)
        with self.not_empty:
            if not block:
                if not self._qsize():
                    raise queue.Empty
            else:
                if timeout is not None and timeout < 0:
                    raise ValueError("'timeout' must be a non-negative number")
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._qsize():
                    step = _SLICE
                    if deadline is not None:
                        step = min(step, deadline - time.monotonic())
                        if step <= 0:
                            raise queue.Empty
                    if not self.not_empty.wait(step) and not self._qsize() \
                            and not conn.peer_alive():
                        raise ClientGone("the caller's connection closed "
                                         "while it waited")
            item = self._get()
            self.not_full.notify()
        conn.undo.append(lambda: self._unget(item))
        return item

    def _unget(self, item: Any) -> None:
        with self.not_empty:
            self.queue.appendleft(item)
            self.not_empty.notify()


class ServerLock:
    """``threading.Lock`` released when its holder's process crashes."""

    def __init__(self) -> None:
        self._lock = self._make()
        self._holder: Any = None

    @staticmethod
    def _make() -> Any:
        return threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        outcome = _sliced_wait(lambda step: (self._lock.acquire(True, step), None),
                               blocking, timeout)
        got = self._lock.acquire(blocking, timeout) if outcome is None else outcome[0]
        if got:
            self._held_by(current_connection())
        return got

    def _held_by(self, conn: Any) -> None:
        self._holder = conn
        if conn is not None:
            conn.undo.append(self.release)
            conn.cleanups[id(self)] = self._release_for_dead_holder

    def release(self) -> None:
        holder, self._holder = self._holder, None
        if holder is not None:
            holder.cleanups.pop(id(self), None)
        self._lock.release()

    def _release_for_dead_holder(self) -> None:
        try:
            self.release()
        except RuntimeError:
            pass

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {'locked' if self.locked() else 'unlocked'}>"


class ServerRLock(ServerLock):
    """``threading.RLock`` released (every level) when its holder's
    process crashes.  Each connection has its own server thread, so the
    RLock's owner is the connection, as it should be."""

    def __init__(self) -> None:
        super().__init__()
        self._count = 0

    @staticmethod
    def _make() -> Any:
        return threading.RLock()

    def _held_by(self, conn: Any) -> None:
        self._count += 1
        if self._count == 1:
            super()._held_by(conn)
        elif conn is not None:
            conn.undo.append(self.release)

    def release(self) -> None:
        self._lock.release()        # raises RuntimeError if not the owner
        self._count -= 1
        if self._count == 0:
            holder, self._holder = self._holder, None
            if holder is not None:
                holder.cleanups.pop(id(self), None)

    def _release_for_dead_holder(self) -> None:
        while self._count:
            try:
                self.release()
            except RuntimeError:
                return

    def locked(self) -> bool:
        return self._count > 0

    # What threading.Condition uses to release the lock fully while it
    # waits and take it back afterwards (the holder follows the lock).
    def _is_owned(self) -> bool:
        return self._lock._is_owned()

    def _release_save(self) -> Any:
        state = (self._lock._release_save(), self._count, self._holder)
        if self._holder is not None:
            self._holder.cleanups.pop(id(self), None)
        self._count, self._holder = 0, None
        return state

    def _acquire_restore(self, state: Any) -> None:
        inner, count, holder = state
        self._lock._acquire_restore(inner)
        self._count, self._holder = count, holder
        if holder is not None:
            holder.cleanups[id(self)] = self._release_for_dead_holder


class ServerCondition(threading.Condition):
    """``threading.Condition`` whose default lock is a ``ServerRLock``: a
    client that dies inside ``with cond:`` does not keep it locked.  Plus
    ``locked()``, which the condition proxy of Python 3.14 exposes."""

    def __init__(self, lock: Any = None) -> None:
        self._held_lock = ServerRLock() if lock is None else lock
        # A ServerRLock has what Condition uses of a lock (acquire, release,
        # _is_owned, ...) without being one of typeshed's lock types.
        super().__init__(self._held_lock)  # type: ignore[arg-type]

    def locked(self) -> bool:
        return self._held_lock.locked()


class ServerSemaphore:
    """``threading.Semaphore`` whose blocking ``acquire`` gives up for a dead
    caller and gives back a permit it could not deliver.

    A permit *held* by a client that died is not given back: a semaphore
    may be released by another client than the one that acquired it, so the
    server cannot tell a leaked permit from one passed on.
    """

    def __init__(self, value: int = 1) -> None:
        self._sem = self._make(value)

    @staticmethod
    def _make(value: int) -> Any:
        return threading.Semaphore(value)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        outcome = _sliced_wait(lambda step: (self._sem.acquire(True, step), None),
                               blocking, timeout)
        got = self._sem.acquire(blocking, timeout) if outcome is None else outcome[0]
        conn = current_connection()
        if got and conn is not None:
            conn.undo.append(self._sem.release)
        return got

    def release(self, n: int = 1) -> None:
        self._sem.release(n)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class ServerBoundedSemaphore(ServerSemaphore):
    """``threading.BoundedSemaphore`` with ``ServerSemaphore``'s care."""

    @staticmethod
    def _make(value: int) -> Any:
        return threading.BoundedSemaphore(value)
