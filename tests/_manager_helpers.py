"""Spawn targets and servers for the managers tests (importable by children).

Run as a script it serves a queue and a dict on loopback, for the remote
tests: ``python _manager_helpers.py serve AUTHKEY_HEX`` prints the port on
its first line, then serves until killed.
"""
from __future__ import annotations

import os
import queue
import signal
import socket
import sys
import time

from polyproc.managers import BaseManager, DictProxy, SyncManager


def wait_until(predicate, timeout: float, interval: float = 0.02) -> bool:
    """Poll *predicate* until it is true or *timeout* seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def call_in_thread(fn):
    """Start a thread running *fn*; return it and the list that will hold
    what *fn* raised (for calls expected to fail while blocked)."""
    import threading
    errors: list = []

    def run():
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


# --- targets for Process / Pool / Executor --------------------------------------

def set_item(d, key, value) -> None:
    d[key] = value


def set_item_task(args) -> int:
    d, key, value = args
    d[key] = value
    return key


def append_and_put(lst, q, value) -> None:
    lst.append(value)
    q.put(("done", value))


def put_square(args) -> None:
    q, i = args
    q.put(i * i)


def echo_queue(inq, outq, n: int) -> None:
    for _ in range(n):
        outq.put(inq.get())


def hold_objects_then_block(manager_address, authkey: bytes, q, ready) -> None:
    """Create objects in the manager, then block inside a call (``q.get``)."""
    from polyproc.managers import SyncManager
    m = SyncManager(address=manager_address, authkey=authkey)
    m.connect()
    held = [m.list(range(3)) for _ in range(5)]    # noqa: F841 (kept alive)
    ready.set()
    q.get()                                          # killed while in here
    time.sleep(60)


def lock_then_block(lock, q, ready) -> None:
    lock.acquire()
    ready.set()
    q.get()


def start_manager_and_report(outq, method: str) -> None:
    """A process that starts a manager and reports its server's pid."""
    import polyproc
    m = polyproc.get_context(method).Manager()
    outq.put(m._process.pid)
    time.sleep(60)      # killed by the test


def incr_namespace(ns, lock, n: int) -> None:
    for _ in range(n):
        with lock:
            ns.count = ns.count + 1


# --- the remote pattern ------------------------------------------------------------

_queue: queue.Queue = queue.Queue()
_dict: dict = {}


def get_queue() -> queue.Queue:
    return _queue


def get_dict() -> dict:
    return _dict


class QueueManager(BaseManager):
    """Server side of the stdlib's "Using a remote manager" example."""


QueueManager.register("get_queue", callable=get_queue)
QueueManager.register("get_dict", callable=get_dict, proxytype=DictProxy)


class RemoteClient(BaseManager):
    """Client side: registers the names only, as the stdlib example does."""


RemoteClient.register("get_queue")
RemoteClient.register("get_dict", proxytype=DictProxy)


def remote_producer(port: int, authkey: bytes, n: int) -> None:
    m = RemoteClient(address=("127.0.0.1", port), authkey=authkey)
    m.connect()
    q = m.get_queue()
    d = m.get_dict()
    for i in range(n):
        q.put(i)
    d["producer_pid"] = os.getpid()


def serve(authkey: bytes, host: str = "127.0.0.1") -> None:
    m = QueueManager(address=(host, 0), authkey=authkey)
    server = m.get_server()
    print(server.address[1], flush=True)
    server.serve_forever()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.argv[1] == "serve":
        serve(bytes.fromhex(sys.argv[2]))
    elif sys.argv[1] == "produce":
        remote_producer(int(sys.argv[2]), bytes.fromhex(sys.argv[3]),
                        int(sys.argv[4]))


def serve_tls(authkey: bytes, certfile: str, keyfile: str) -> None:
    import ssl
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    m = QueueManager(address=("127.0.0.1", 0), authkey=authkey,
                     ssl_context=context)
    server = m.get_server()
    print(server.address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__" and sys.argv[1] == "serve-tls":
    serve_tls(bytes.fromhex(sys.argv[2]), sys.argv[3], sys.argv[4])


class Forker:
    """Server-side object that forks a child which outlives the server."""

    def __init__(self) -> None:
        import multiprocessing
        self.child = multiprocessing.get_context("fork").Process(
            target=time.sleep, args=(30,))
        self.child.start()

    def pid(self) -> int:
        return self.child.pid


class ForkingManager(BaseManager):
    pass


ForkingManager.register("Forker", Forker)


def set_env(name: str, value: str) -> None:
    os.environ[name] = value


def snapshot_env() -> dict:
    return dict(os.environ)


def hold_condition_then_block(cond, q, ready) -> None:
    cond.acquire()
    ready.set()
    q.get()


def wait_on_semaphore(sem, ready) -> None:
    ready.set()
    sem.acquire()           # blocks: the semaphore is at 0
    time.sleep(60)


# --- a probe into the server, to wait until a client is blocked in a call ------

def count_waiters(proxy) -> int:
    """Server side: how many calls wait on the object behind *proxy*."""
    from multiprocessing.process import current_process
    server = current_process()._manager_server
    obj = server.id_to_obj[proxy._id].obj
    if hasattr(obj, "_ring"):     # a ServerRingQueue: getters wait on its ring
        from polyproc._queue.ring import _GET_WAITERS
        return obj._ring._h[_GET_WAITERS]
    if hasattr(obj, "not_empty"):                 # a queue
        return len(obj.not_empty._waiters)
    return len(obj._sem._cond._waiters)           # a ServerSemaphore


class ProbingManager(SyncManager):
    """SyncManager plus ``waiters(proxy)``, for tests only."""


ProbingManager.register("count_waiters", count_waiters)


def blocked_in_server(manager, proxy) -> bool:
    return manager.count_waiters(proxy)._getvalue() > 0


# --- a probe into the server side of the calling connection's fast path ---------

class ConnectionSpin:
    """Server side: the spin budget of the connection a call comes from."""

    def set_budget(self, value: int) -> None:
        from polyproc._managers.server import current_connection
        current_connection().chan.spin.budget = value

    def budget(self) -> int:
        from polyproc._managers.server import current_connection
        return current_connection().chan.spin.budget


class SpinProbeManager(SyncManager):
    """SyncManager plus ``ConnectionSpin()``, for tests only."""


SpinProbeManager.register("ConnectionSpin", ConnectionSpin)
