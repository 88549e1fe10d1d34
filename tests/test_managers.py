"""polyproc.managers: the stdlib's API and semantics."""
from __future__ import annotations

import concurrent.futures
import copy
import gc
import multiprocessing
import multiprocessing.managers as std_managers
import threading

import psutil
import pytest

import _manager_helpers as helpers
import polyproc
from polyproc import managers
from polyproc._exceptions import (ManagerConnectionError, RemoteError,
                                  RemoteTraceback, SerializationError)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def manager():
    with polyproc.Manager() as m:
        yield m


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


class MakesUnpicklable:
    """Server-side object whose method returns something unpicklable."""

    def lock(self):
        return threading.Lock()

    def boom(self):
        raise ValueError("raised in the server")


class CustomManager(managers.BaseManager):
    pass


CustomManager.register("Thing", MakesUnpicklable)
CustomManager.register("lambda_list", lambda: [1, 2, 3],
                       proxytype=managers.ListProxy)
CustomManager.register("env", helpers.snapshot_env, managers.DictProxy)
CustomManager.register("make_list", list, managers.ListProxy,
                       method_to_typeid=None, create_method=True)
CustomManager.register("Thing2", MakesUnpicklable, exposed=("boom",),
                       method_to_typeid={"boom": "Thing2"})
CustomManager.register("no_method", list, create_method=False)


def test_public_names_mirror_stdlib():
    for name in std_managers.__all__:
        assert hasattr(managers, name), name
    for name in ("AutoProxy", "NamespaceProxy", "ValueProxy", "ListProxy",
                 "DictProxy", "Server", "RebuildProxy", "MakeProxyType",
                 "Namespace", "RemoteError"):
        assert hasattr(managers, name), name
    assert managers.DictProxy.__module__ == "polyproc.managers"


def test_manager_returns_started_syncmanager():
    m = polyproc.Manager()
    try:
        assert isinstance(m, managers.SyncManager)
        assert m._process.is_alive()
        assert isinstance(m.address, str)       # a Unix socket by default
    finally:
        m.shutdown()
    assert not m._process.is_alive()


def test_dict_and_list(manager):
    d = manager.dict({"a": 1})
    lst = manager.list([1, 2])
    d["b"] = 2
    lst.append(3)
    lst += [4]
    assert d.copy() == {"a": 1, "b": 2}
    assert sorted(d.keys()) == ["a", "b"]
    assert len(d) == 2 and "a" in d and d.get("zz", 7) == 7
    assert lst[:] == [1, 2, 3, 4] and len(lst) == 4
    assert list(iter(d)) == ["a", "b"]         # __iter__ -> Iterator proxy
    with pytest.raises(KeyError) as info:
        d["missing"]
    assert isinstance(info.value.__cause__, RemoteTraceback)
    with pytest.raises(IndexError):
        lst[10]
    assert copy.deepcopy(lst) == [1, 2, 3, 4]
    assert "'a': 1" in str(d)


def test_nested_proxies(manager):
    outer = manager.dict()
    inner = manager.list()
    outer["inner"] = inner
    outer["inner"].append("x")
    got = outer["inner"]
    assert isinstance(got, managers.ListProxy)
    assert inner[:] == ["x"] and got[:] == ["x"]
    del inner, got
    gc.collect()
    outer["inner"].append("y")       # kept alive by the server-side proxy
    assert outer["inner"][:] == ["x", "y"]


def test_namespace_value_array(manager):
    ns = manager.Namespace(a=1)
    ns.b = 2
    assert (ns.a, ns.b) == (1, 2)
    del ns.a
    with pytest.raises(AttributeError):
        ns.a
    v = manager.Value("i", 5)
    v.value += 1
    assert v.get() == 6
    a = manager.Array("i", [1, 2, 3])
    a[0] = 9
    assert list(a) == [9, 2, 3] and len(a) == 3


def test_queues(manager):
    q = manager.Queue()
    q.put(1)
    assert q.get(timeout=5) == 1
    with pytest.raises(Exception) as info:       # queue.Empty, as the stdlib
        q.get(timeout=0.01)
    assert type(info.value).__name__ == "Empty"
    jq = manager.JoinableQueue()
    jq.put("job")
    assert jq.get() == "job"
    jq.task_done()
    jq.join()                                    # returns: every task done


def test_synchronisation_primitives(manager):
    lock, rlock = manager.Lock(), manager.RLock()
    assert lock.acquire(timeout=1)
    assert not lock.acquire(blocking=False)
    lock.release()
    with rlock, rlock:
        pass
    sem, bsem = manager.Semaphore(2), manager.BoundedSemaphore(1)
    assert sem.acquire() and sem.acquire() and not sem.acquire(False)
    bsem.acquire()
    bsem.release()
    with pytest.raises(ValueError):
        bsem.release()
    ev = manager.Event()
    assert not ev.wait(0.01)
    ev.set()
    assert ev.is_set() and ev.wait(1)
    cond = manager.Condition()
    with cond:
        assert cond.wait_for(lambda: True) is True
        assert cond.wait(0.01) is False
        cond.notify_all()
    barrier = manager.Barrier(1)
    assert barrier.parties == 1 and barrier.wait(1) == 0
    assert not barrier.broken


def test_condition_with_managed_lock(manager):
    lock = manager.Lock()
    cond = manager.Condition(lock)
    with cond:
        cond.notify()
    assert lock.acquire(False)
    lock.release()


def test_pool_method_returns_polyproc_pool():
    with polyproc.Manager() as m, m.Pool(2) as pool:
        assert pool.map(abs, [-1, -2, 3]) == [1, 2, 3]
        result = pool.apply_async(abs, (-5,))
        assert result.get(timeout=20) == 5
        assert sorted(pool.imap_unordered(abs, [-1, -2])) == [1, 2]


def test_register_custom_type_autoproxy_and_lambda():
    with CustomManager() as m:
        thing = m.Thing()
        assert type(thing).__name__ == "AutoProxy[Thing]"
        with pytest.raises(ValueError, match="raised in the server"):
            thing.boom()
        # A result that cannot be pickled: a clear error in the caller,
        # and the connection goes on.
        with pytest.raises(SerializationError, match="manager reply"):
            thing.lock()
        assert m.lambda_list()[:] == [1, 2, 3]    # registry via cloudpickle
        with pytest.raises(AttributeError, match="not in exposed"):
            thing._callmethod("__init__")


def test_start_initializer_runs_in_server(ctx_fs):
    m = CustomManager(ctx=ctx_fs)
    m.start(initializer=helpers.set_env, initargs=("POLYPROC_MGR_INIT", "yes"))
    try:
        assert m.env()["POLYPROC_MGR_INIT"] == "yes"
        assert m.lambda_list()[:] == [1, 2, 3]   # registry crossed by value
        assert not hasattr(m, "no_method")       # create_method=False
        assert type(m.Thing2())._exposed_ == ("boom",)
        m.join(0.01)                             # still running: returns
        assert m._process.is_alive()
    finally:
        m.shutdown()


def test_unpicklable_argument_raises_in_caller(manager):
    d = manager.dict()
    with pytest.raises(SerializationError, match="__setitem__"):
        d["x"] = Unpicklable()
    d["y"] = 1                                    # connection still usable
    assert d.copy() == {"y": 1}


def test_unrebuildable_exception_becomes_remote_error():
    class Weird(Exception):
        def __init__(self, a, b):
            super().__init__(a)

    class Raiser:
        def go(self):
            raise Weird(1, 2)

    class M(managers.BaseManager):
        pass

    M.register("Raiser", Raiser)
    with M(ctx=polyproc.get_context("fork")) as m:
        with pytest.raises(RemoteError) as info:
            m.Raiser().go()
        assert "Weird" in str(info.value)


def test_objects_are_released_when_proxies_die(manager):
    gc.collect()
    before = manager._number_of_objects()
    lists = [manager.list() for _ in range(5)]
    assert manager._number_of_objects() == before + 5
    del lists
    gc.collect()
    assert manager._number_of_objects() == before


def test_proxy_pickled_into_process(ctx):
    with ctx.Manager() as m:
        lst, q = m.list(), m.Queue()
        p = ctx.Process(target=helpers.append_and_put, args=(lst, q, 42))
        p.start()
        assert q.get(timeout=20) == ("done", 42)
        p.join(20)
        assert p.exitcode == 0
        assert lst[:] == [42]


def test_proxies_in_pool_tasks(ctx_fs):
    with ctx_fs.Manager() as m:
        d = m.dict()
        with ctx_fs.Pool(2) as pool:
            keys = pool.map(helpers.set_item_task, [(d, i, i * i) for i in range(8)])
        assert keys == list(range(8))
        assert d.copy() == {i: i * i for i in range(8)}


def test_proxies_in_executor_submits(ctx_fs):
    with ctx_fs.Manager() as m:
        d = m.dict()
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx_fs) as ex:
            futures = [ex.submit(helpers.set_item, d, i, str(i)) for i in range(4)]
            for f in futures:
                f.result(timeout=20)
        assert d.copy() == {i: str(i) for i in range(4)}


def test_proxies_in_polyproc_executor_submits(ctx_fs):
    with ctx_fs.Manager() as m:
        d = m.dict()
        with ctx_fs.Executor(2) as ex:
            futures = [ex.submit(helpers.set_item, d, i, -i) for i in range(4)]
            for f in futures:
                f.result(timeout=20)
        assert d.copy() == {i: -i for i in range(4)}


def test_stdlib_process_with_polyproc_manager():
    # stdlib code using `import polyproc as multiprocessing` mixes both.
    ctx = multiprocessing.get_context("fork")
    with polyproc.Manager() as m:
        d = m.dict()
        p = ctx.Process(target=helpers.set_item, args=(d, "k", "v"))
        p.start()
        p.join(20)
        assert d.copy() == {"k": "v"}


def test_proxies_from_threads(manager):
    ns, lock = manager.Namespace(count=0), manager.Lock()
    d = manager.dict()

    def work(i):
        for j in range(20):
            d[(i, j)] = j
        helpers.incr_namespace(ns, lock, 20)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(d) == 6 * 20
    assert ns.count == 6 * 20


def test_shutdown_then_call_raises_clearly():
    m = polyproc.Manager()
    d = m.dict()
    m.shutdown()
    with pytest.raises(ManagerConnectionError) as info:
        d["x"] = 1
    assert isinstance(info.value, (ConnectionError, EOFError))
    assert str(m.address) in str(info.value)
    m.shutdown()                                   # idempotent


def test_context_manager_and_states():
    m = managers.SyncManager()
    with pytest.raises(polyproc.ProcessError):
        m.dict()                                   # not started
    with m:
        with pytest.raises(polyproc.ProcessError):
            m.start()
        assert m.list([1])[:] == [1]
    with pytest.raises(polyproc.ProcessError):
        m.__enter__()
    # As the stdlib: an unknown serializer is a KeyError ('xmlrpclib' is
    # supported: tests/test_compat.py).
    with pytest.raises(KeyError, match="serializer"):
        managers.BaseManager(serializer="xmlrpc")


def test_start_initializer_failure_is_reported():
    m = managers.SyncManager(ctx=polyproc.get_context("fork"))
    with pytest.raises(polyproc.ProcessError, match="exited before serving"):
        m.start(initializer=int, initargs=("not a number",))


def test_shared_memory_manager():
    with managers.SharedMemoryManager() as smm:
        shm = smm.SharedMemory(128)
        sl = smm.ShareableList([1, 2, 3])
        shm.buf[0] = 7
        assert sl[2] == 3
        assert set(smm._list_segments()) == {shm.name, sl.shm.name}
        name = shm.name
        shm.close()
        sl.shm.close()
    from multiprocessing import shared_memory
    with pytest.raises(FileNotFoundError):        # unlinked at shutdown
        shared_memory.SharedMemory(name)


def test_connections_of_finished_threads_are_closed(manager):
    d = manager.dict()
    d["warm"] = 1                       # this thread's connection exists
    gc.collect()
    me = psutil.Process()
    before = me.num_fds()

    def one_call():
        d["t"] = 1

    for _ in range(20):
        t = threading.Thread(target=one_call)
        t.start()
        t.join(10)
    gc.collect()
    assert me.num_fds() <= before + 2


@pytest.mark.timeout(60)
def test_proxies_work_in_a_bare_fork_child(ctx_fs):
    # Unlike a Pool, proxies are meant for children: one inherited through
    # os.fork() opens its own connection on its first call there.
    import os
    import signal
    from multiprocessing.connection import wait
    with ctx_fs.Manager() as m:
        d, q, lock = m.dict(), m.Queue(), m.Lock()
        d["parent"] = 1              # the parent's connections are open
        r, w = os.pipe()
        child = os.fork()
        if child == 0:  # never return into pytest from here
            code = 1
            try:
                d["child"] = os.getpid()
                with lock:
                    q.put(list(m.list([1, 2])))
                code = 0
            finally:
                os.write(w, bytes([code]))
                os._exit(code)
        os.close(w)
        try:
            assert wait([r], 20), "the forked child hangs"
            assert os.read(r, 1) == b"\0"
        except BaseException:
            os.kill(child, signal.SIGKILL)
            raise
        finally:
            os.close(r)
            os.waitpid(child, 0)
        assert d["child"] == child and q.get(timeout=10) == [1, 2]
        assert d["parent"] == 1      # and the parent's still work


def test_temporary_proxy_passed_to_process(ctx):
    # Process.start() drops its args at once: the child must still reach
    # the object (inherited under fork, unpickled under spawn/forkserver).
    with ctx.Manager() as m:
        q = m.Queue()
        p = ctx.Process(target=helpers.append_and_put, args=(m.list(), q, 7))
        p.start()
        gc.collect()
        m._number_of_objects()          # flushes the parent's release
        assert q.get(timeout=20) == ("done", 7)
        p.join(20)
        assert p.exitcode == 0


def test_large_numpy_array_through_proxies(manager):
    np = pytest.importorskip("numpy")
    array = np.arange(2_000_000, dtype=np.float64)       # 16 MB: zero-copy path
    d, q = manager.dict(), manager.Queue()
    d["a"] = array
    q.put(array)
    assert np.array_equal(d["a"], array)
    assert np.array_equal(q.get(timeout=10), array)


def test_remote_links_pickle_in_band():
    # A shared-memory segment's name means nothing on another machine: a
    # link to a non-local peer pickles everything into the frame.
    np = pytest.importorskip("numpy")
    from polyproc._managers.wire import Call, decode, dumps_in_band, encode
    array = np.arange(1_000_000, dtype=np.float64)
    payload = encode(Call(1, "put", (array,), {}), dumps=dumps_in_band)
    assert len(payload) > array.nbytes                   # in the frame itself
    assert np.array_equal(decode(payload).args[0], array)
    with pytest.raises(SerializationError):
        dumps_in_band(Unpicklable())
