"""Targets and servers for tests/test_compat.py (importable by spawned children).

Run as a script it serves a dict, a list and a Value with
``serializer='xmlrpclib'`` on loopback: ``python _compat_helpers.py
serve-xmlrpc AUTHKEY_HEX`` prints the port on its first line, then serves
until killed.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from polyproc.managers import BaseManager, DictProxy, ListProxy, ValueProxy


def square(x):
    return x * x


def wait_for_interrupt(ready, q) -> None:
    """Wait (in a sleep that SIGINT breaks) until interrupted; the finally
    clause reports that it ran."""
    try:
        ready.set()
        time.sleep(60)
    finally:
        q.put("finally ran")


def touch_then_block(directory: str, index: int, release: str, limit: float = 30.0):
    """Leave ``directory/index`` as proof the task started, then run until
    *release* exists (at most *limit* seconds)."""
    with open(os.path.join(directory, str(index)), "w"):
        pass
    deadline = time.monotonic() + limit
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)
    return index


def ignore_sigterm_then_block(directory: str, index: int, release: str):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return touch_then_block(directory, index, release)


def take_lock(lock, holding) -> None:
    """Acquire *lock*, say so, and exit normally without releasing it."""
    lock.acquire()
    holding.set()


def take_lock_and_hold_objects(lock, manager_list, holding) -> None:
    """``take_lock``, keeping a proxy alive: the parent watches the
    server's object count to know when this process's session ended."""
    held = manager_list  # noqa: F841  (a reference the session counts)
    take_lock(lock, holding)


# --- a remote manager with serializer='xmlrpclib' ------------------------------

_shared: dict = {}


def _shared_dict() -> dict:
    return _shared.setdefault("dict", {})


def _shared_list() -> list:
    return _shared.setdefault("list", [])


class _Value:
    def __init__(self) -> None:
        self._value = 0

    def get(self):
        return self._value

    def set(self, value) -> None:
        self._value = value


def _shared_value() -> _Value:
    return _shared.setdefault("value", _Value())


class XmlManager(BaseManager):
    pass


XmlManager.register("get_dict", _shared_dict, DictProxy)
XmlManager.register("get_list", _shared_list, ListProxy)
XmlManager.register("get_value", _shared_value, ValueProxy)


def serve_xmlrpc(authkey: bytes) -> None:
    m = XmlManager(address=("127.0.0.1", 0), authkey=authkey,
                   serializer="xmlrpclib")
    server = m.get_server()
    print(server.address[1], flush=True)
    server.serve_forever()


def xml_client(port: int, authkey: bytes) -> XmlManager:
    m = XmlManager(address=("127.0.0.1", port), authkey=authkey,
                   serializer="xmlrpclib")
    m.connect()
    return m


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.argv[1] == "serve-xmlrpc":
        serve_xmlrpc(bytes.fromhex(sys.argv[2]))
    elif sys.argv[1] == "pool-size":
        # Prints the number of workers of Pool() and Executor(), then
        # cpu_count() and process_cpu_count(), one per line.
        import polyproc
        with polyproc.Pool() as pool:
            print(len(pool._pool))
        with polyproc.Executor() as ex:
            print(len(ex._processes))
        print(polyproc.cpu_count())
        print(polyproc.process_cpu_count())


# --- tests/test_start_methods.py ---------------------------------------------------

def put_square(args) -> int:
    q, i = args
    q.put(i * i)
    return i


def buffer_backing(arr) -> tuple[str, str, float]:
    """Where a received NumPy array's memory lives: ``('memoryview',
    'mmap', sum)`` when it came through shared memory."""
    base = arr.base
    while base is not None and not isinstance(base, memoryview) \
            and getattr(base, "base", None) is not None:
        base = base.base
    return type(base).__name__, type(getattr(base, "obj", None)).__name__, float(arr.sum())


def fail_with_value_error(message: str) -> None:
    raise ValueError(message)


def put_large_array(q, n: int) -> None:
    import numpy as np
    q.put(np.arange(n, dtype=np.float64))


def hold_lock_until(lock, holding, go) -> None:
    with lock:
        holding.set()
        go.wait(60)


SHM_PROGRAM = """
import sys
from polyproc.shared_memory import SharedMemory
for name, track in ((sys.argv[1], True), (sys.argv[2], False)):
    SharedMemory(name, create=True, size=4096, track=track).close()
"""
