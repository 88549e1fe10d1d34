"""polyproc.managers: ``Manager().Queue()`` on its shared-memory ring.

Each behaviour is checked on both paths: the proxy that maps the ring (a
process of the server's machine) and the proxy that calls the server (what
a proxy on another machine does; forced here with ``through_server``).
"""
from __future__ import annotations

import gc
import os
import pickle
import queue
import signal
import threading
import time

import pytest

import _manager_helpers as helpers
import polyproc
from polyproc._managers import client as _manager_client
from polyproc._queue import primitives as _queue_shm
from polyproc._exceptions import ManagerConnectionError, SerializationError
from polyproc._managers.queue import QueueProxy

pytestmark = [
    pytest.mark.timeout(40),
    pytest.mark.skipif(not _queue_shm.AVAILABLE,
                       reason="ring queues need Linux on x86-64"),
]


def through_server(proxy):
    """Make *proxy* call the server for everything, as a remote one does."""
    proxy.__dict__["_ring_state"] = (_manager_client.pid, None)
    return proxy


@pytest.fixture(scope="module")
def manager():
    with polyproc.Manager() as m:
        yield m


@pytest.fixture(params=["shared memory", "through the server"])
def path(request):
    return (lambda q: q) if request.param == "shared memory" else through_server


def test_local_proxies_map_the_ring(manager):
    q = manager.Queue()
    assert isinstance(q, QueueProxy)
    assert q._local_ring() is not None
    q.put("x")
    assert q.qsize() == 1 and not q.empty()
    assert q.get() == "x"


def test_fifo_and_queue_exceptions(manager, path):
    q = path(manager.Queue())
    for i in range(5):
        q.put(i)
    assert [q.get() for _ in range(5)] == list(range(5))
    with pytest.raises(queue.Empty):
        q.get_nowait()
    start = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert 0.15 < time.monotonic() - start < 3
    with pytest.raises(ValueError):
        q.get(timeout=-1)


def test_bounded_queue(manager, path):
    q = path(manager.Queue(2))
    q.put(1)
    q.put_nowait(2)
    assert q.full()
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.1)
    assert q.get() == 1
    q.put(3, timeout=5)
    assert [q.get(), q.get()] == [2, 3]
    assert q.empty() and not q.full()


def test_task_done_and_join(manager, path):
    q = path(manager.JoinableQueue())
    q.put("job")
    q.put("job")
    done = threading.Event()

    def joiner():
        q.join()
        done.set()

    t = threading.Thread(target=joiner)
    t.start()
    assert q.get() == "job" and q.get() == "job"
    q.task_done()
    assert not done.wait(0.2)              # one task still open
    q.task_done()
    assert done.wait(10)
    t.join(5)
    with pytest.raises(ValueError):
        q.task_done()                       # called too many times


def test_both_paths_share_one_queue(manager):
    q = manager.Queue()
    remote = through_server(pickle.loads(pickle.dumps(q)))
    q.put("from shared memory")
    remote.put("through the server")
    assert remote.get() == "from shared memory"
    assert q.get() == "through the server"


def test_unpicklable_item_raises_in_the_caller_and_puts_nothing(manager):
    q = manager.Queue()
    with pytest.raises(SerializationError):
        q.put(threading.Lock())
    assert q.qsize() == 0


def test_lambdas_travel(manager, path):
    q = path(manager.Queue())
    q.put(lambda x: x + 1)
    assert q.get()(1) == 2


def test_items_holding_proxies_keep_their_objects(monkeypatch):
    # The server frees a released object RELEASE_GRACE seconds later; an
    # item holding a proxy must keep its object for as long as it is queued.
    from polyproc._managers import server as _manager_server
    monkeypatch.setattr(_manager_server, "RELEASE_GRACE", 0.1)
    ctx = polyproc.get_context("fork")          # the server inherits the patch
    with ctx.Manager() as m:
        q = m.Queue()
        lst = m.list([1, 2, 3])
        q.put({"payload": lst})
        baseline = m._number_of_objects()
        del lst
        gc.collect()
        time.sleep(1.2)           # past the grace period and a server reap
        assert m._number_of_objects() == baseline
        item = q.get(timeout=5)
        assert list(item["payload"]) == [1, 2, 3]


def test_shutdown_then_queue_call_raises_clearly():
    m = polyproc.Manager()
    q = m.Queue()
    q.put(1)
    m.shutdown()
    with pytest.raises(ManagerConnectionError):
        q.put(2)
    with pytest.raises(ManagerConnectionError):
        q.get()


@pytest.mark.timeout(20)
def test_blocked_get_raises_when_the_server_dies():
    m = polyproc.Manager()
    q = m.Queue()
    q.put(0)
    assert q.get() == 0                      # the ring is mapped
    t, errors = helpers.call_in_thread(q.get)
    assert helpers.wait_until(lambda: _waiting_getters(q) > 0, 10)
    os.kill(m._process.pid, signal.SIGKILL)
    start = time.monotonic()
    t.join(5)
    assert not t.is_alive()
    assert isinstance(errors[0], ManagerConnectionError)
    assert time.monotonic() - start < 2


def _waiting_getters(q) -> int:
    from polyproc._queue.ring import _GET_WAITERS
    return q._local_ring()._h[_GET_WAITERS]


def test_interrupted_get_takes_no_item(manager):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    q = manager.Queue()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            q.get(timeout=10)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    q.put("kept")
    assert q.get(timeout=5) == "kept"


def test_echo_between_processes(ctx):
    with polyproc.Manager() as m:
        inq, outq = m.Queue(), m.Queue()
        p = ctx.Process(target=helpers.echo_queue, args=(inq, outq, 50))
        p.start()
        for i in range(50):
            inq.put(i)
            assert outq.get(timeout=20) == i
        p.join(20)
        assert p.exitcode == 0


def test_queue_proxies_in_pool_tasks(ctx_fs):
    with ctx_fs.Manager() as m:
        q = m.Queue()
        with ctx_fs.Pool(2) as pool:
            pool.map(helpers.put_square, [(q, i) for i in range(20)])
        got = sorted(q.get(timeout=10) for _ in range(20))
        assert got == [i * i for i in range(20)]
