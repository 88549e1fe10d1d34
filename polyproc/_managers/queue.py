"""``Manager().Queue()``: a managed queue whose items live in shared memory.

Why not a ``queue.Queue`` in the server, as the stdlib has
--------------------------------------------------------
Every ``put`` and ``get`` would be a call to the server, and a round trip
through a managed queue (one process puts, another gets and puts an answer
back on a second queue) chains four of them, two of which block a server
thread on a condition variable: six process and thread wake-ups in all,
about 130 us on the 2-core machine polyproc is measured on.

Here the queue is a polyproc ``JoinableQueue``: a ring in shared memory
(``_queue.ring``), created by the server, which owns its files.  A proxy
in a process of the same machine asks the server once for the ring's name,
maps it, and from then on puts and gets through shared memory, as a
``polyproc.Queue`` does; a round trip takes about 7 us.  A proxy on
another machine (or where the ring cannot be mapped) calls the server, and
the server puts into and takes from the same ring: there is one queue,
whoever uses it.

    local proxy ──put/get──▶ ring (shared memory) ◀──put/get── ServerRingQueue
      │                                                  ▲ (in the server)
      └── first use: Call("_ring_name") ──▶ server        └── remote proxies' calls

What the stdlib's semantics need, and how they are kept:

* **A dead server is an error, not a silent queue.**  Before each
  operation the proxy checks that its process's lifeline to the server is
  still open (one ``poll`` system call); a blocking wait is cut into
  slices of ``_SLICE`` seconds with the same check in between, so a proxy
  blocked in ``get`` raises ``ManagerConnectionError`` within a slice of
  the server dying.
* **Items that hold proxies stay referenced.**  In the stdlib the server
  unpickles an item, so a proxy inside it holds a reference to its object
  for as long as the item is queued.  Bytes in a ring hold nothing.  So an
  item whose pickling met a proxy goes to the server instead, which keeps
  the item itself and puts a ``HeldItem`` ticket in its place in the ring;
  whoever gets the ticket claims the item from the server.  Order is kept.
* ``put``, ``get``, ``put_nowait``, ``get_nowait``, ``qsize``, ``empty``,
  ``full``, ``task_done`` and ``join`` behave as ``queue.Queue``'s, with
  ``queue.Empty``/``queue.Full``.

The server-side calls (for remote proxies) give an item back when its
reply cannot be delivered, as ``ServerQueue`` does, but to the *end* of the
ring: a ring has no front to push to.  Nothing is lost; that one item's
place in the order is.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
from typing import Any, NamedTuple

from . import client as _manager_client
from . import proxy as _manager_proxy
from .proxy import BaseProxy
from .server import ClientGone, current_connection
# _queue/ring.py (and ctypes under it) is imported on first use, not here: a
# manager's server process imports this module whether or not it will ever
# hold a queue, and every millisecond counts in a spawned server's start.
from .._transport.serialization import dumps, loads, release

__all__ = ["ServerRingQueue", "QueueProxy", "HeldItem"]

_SLICE = 0.2         # seconds between checks that the server (or client) lives
_WHAT = "queue item"


class HeldItem(NamedTuple):
    """In the ring in place of an item the server keeps (it holds proxies)."""
    number: int


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return time.monotonic() + timeout


def _step(deadline: float | None) -> float:
    """The next slice to wait; 0 or less when the deadline has passed."""
    if deadline is None:
        return _SLICE
    return min(_SLICE, deadline - time.monotonic())


def _dumps_noting_proxies(obj: Any) -> tuple[bytes, bool]:
    """The payload of *obj*, and whether pickling it pickled a proxy."""
    before = _manager_proxy.proxies_pickled
    payload = dumps(obj, _WHAT)
    return payload, _manager_proxy.proxies_pickled != before


# --- the server's side -------------------------------------------------------

class ServerRingQueue:
    """The object a manager keeps for ``Queue()`` and ``JoinableQueue()``."""

    def __init__(self, maxsize: int = 0):
        from .._queue.queue import JoinableQueue
        self._queue: JoinableQueue[Any] = JoinableQueue(maxsize)    # the server owns it
        self._ring = self._queue._ring
        self._held: dict[int, Any] = {}
        self._numbers = itertools.count()
        self._held_lock = threading.Lock()

    def _ring_name(self) -> str:
        return self._ring.name

    def _claim(self, number: int) -> Any:
        with self._held_lock:
            return self._held.pop(number)

    def _payload(self, item: Any) -> bytes:
        payload, holds_proxy = _dumps_noting_proxies(item)
        if not holds_proxy:
            return payload
        release(payload)
        with self._held_lock:
            number = next(self._numbers)
            self._held[number] = item
        return dumps(HeldItem(number), _WHAT)

    def _unheld(self, payload: bytes) -> Any:
        item = loads(payload, _WHAT)
        if type(item) is HeldItem:
            return self._claim(item.number)
        return item

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        payload = self._payload(item)
        try:
            _in_slices(lambda step: self._ring.put_one(payload, True, step),
                       lambda: self._ring.put_one(payload, False, None),
                       block, timeout, queue.Full, _check_caller)
        except BaseException:
            release(payload)
            raise

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        payload = _in_slices(lambda step: self._ring.get_one(True, step),
                             lambda: self._ring.get_one(False, None),
                             block, timeout, queue.Empty, _check_caller)
        item = self._unheld(payload)
        conn = current_connection()
        if conn is not None:
            conn.undo.append(lambda: self.put(item))
        return item

    def put_nowait(self, item: Any) -> None:
        self.put(item, False)

    def get_nowait(self) -> Any:
        return self.get(False)

    def qsize(self) -> int:
        return self._queue.qsize()

    def empty(self) -> bool:
        return self._queue.empty()

    def full(self) -> bool:
        return self._queue.full()

    def task_done(self) -> None:
        self._queue.task_done()

    def join(self) -> None:
        while not self._ring.join(_SLICE):
            _check_caller()


def _in_slices(wait: Any, try_once: Any, block: bool, timeout: float | None,
               failure: type, between: Any) -> Any:
    """``try_once()`` if not *block*; else ``wait(slice)`` until it succeeds,
    calling ``between()`` after each slice that ran out (it raises to give
    up: the server or the caller is gone).  *failure* (``queue.Empty`` or
    ``queue.Full``) when nothing came in time."""
    from .._queue.ring import Timeout
    if not block:
        try:
            return try_once()
        except Timeout:
            raise failure from None
    deadline = _deadline(timeout)
    while True:
        step = _step(deadline)
        if step <= 0:
            raise failure
        try:
            return wait(step)
        except Timeout:
            between()


def _check_caller() -> None:
    """Server side, between slices: give up when the caller has gone."""
    conn = current_connection()
    if conn is not None and not conn.peer_alive():
        raise ClientGone("the caller's connection closed while it waited")


# --- the client's side ---------------------------------------------------------

class QueueProxy(BaseProxy):
    """Proxy of a managed queue: through shared memory on this machine,
    through the server from another one.  Methods and exceptions as
    ``queue.Queue``'s; a dead server raises ``ManagerConnectionError``."""

    _exposed_ = ("put", "get", "put_nowait", "get_nowait", "qsize", "empty",
                 "full", "task_done", "join", "_ring_name", "_claim")

    def _local_ring(self) -> Any:
        """The ring, mapped in this process; None to go through the server."""
        state = self.__dict__.get("_ring_state")
        pid = _manager_client.pid
        if state is not None and state[0] == pid:
            return state[1]
        ring = None
        if self._pid != pid:
            self._attach()
        # serializer='xmlrpclib': items go through the server, which
        # marshals them as the stdlib's managed queue does.
        if self._serializer == "pickle" and self._client.on_this_machine():
            from .._queue.ring import QueueGone, Ring
            name = self._callmethod("_ring_name")
            try:
                ring = Ring.attach(name)
            except (QueueGone, OSError):
                ring = None          # another machine's /dev/shm after all
        self.__dict__["_ring_state"] = (pid, ring)
        return ring

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        ring = self._local_ring()
        if ring is None:
            return self._callmethod("put", (obj, block, timeout))
        payload, holds_proxy = _dumps_noting_proxies(obj)
        if holds_proxy:
            release(payload)
            return self._callmethod("put", (obj, block, timeout))
        try:
            self._wait(lambda step: ring.put_one(payload, True, step),
                       lambda: ring.put_one(payload, False, None),
                       block, timeout, queue.Full)
        except BaseException:
            release(payload)
            raise

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        ring = self._local_ring()
        if ring is None:
            return self._callmethod("get", (block, timeout))
        payload = self._wait(lambda step: ring.get_one(True, step),
                             lambda: ring.get_one(False, None),
                             block, timeout, queue.Empty)
        item = loads(payload, _WHAT)
        if type(item) is HeldItem:
            return self._callmethod("_claim", (item.number,))
        return item

    def _wait(self, wait: Any, try_once: Any, block: bool,
              timeout: float | None, failure: type) -> Any:
        check_server = self._client.check_server
        check_server()
        return _in_slices(wait, try_once, block, timeout, failure, check_server)

    def put_nowait(self, obj: Any) -> None:
        return self.put(obj, False)

    def get_nowait(self) -> Any:
        return self.get(False)

    def _checked_ring(self) -> Any:
        """The local ring after checking the server lives; None to call it."""
        ring = self._local_ring()
        if ring is not None:
            self._client.check_server()
        return ring

    def qsize(self) -> int:
        ring = self._checked_ring()
        return self._callmethod("qsize") if ring is None else ring.qsize()

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        ring = self._checked_ring()
        if ring is None:
            return self._callmethod("full")
        return bool(ring.maxsize) and ring.qsize() >= ring.maxsize

    def task_done(self) -> None:
        ring = self._checked_ring()
        if ring is None:
            return self._callmethod("task_done")
        ring.task_done()

    def join(self) -> None:
        ring = self._checked_ring()
        if ring is None:
            return self._callmethod("join")
        while not ring.join(_SLICE):
            self._client.check_server()
