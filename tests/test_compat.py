"""Today's API on every supported Python, and the managers' stdlib fidelity.

One test (or a few) per row of docs/compat.md.  Each docstring says what
the stdlib does and what polyproc does.  Targets for child processes live
in tests/_compat_helpers.py (spawned children import them).  Nothing
sleeps to synchronise: waits are on events, results, files or a bounded
``wait_until``.
"""
from __future__ import annotations

import collections.abc
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from concurrent.futures.process import BrokenProcessPool

import pytest

import _compat_helpers as helpers
import _manager_helpers
import polyproc
from polyproc import _cpu
from polyproc._managers.server import _HELD_POLL
from polyproc.managers import DictProxy, ListProxy, SetProxy, SyncManager

WAIT = 30  # bound on any single wait, far above what each takes


@pytest.fixture
def fork_ctx():
    return polyproc.get_context("fork")


@pytest.fixture(scope="module")
def manager():
    with SyncManager(ctx=polyproc.get_context("fork")) as m:
        yield m


def _child_env(**extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(polyproc.__file__)),
         os.path.dirname(__file__)]))
    env.pop("PYTHON_CPU_COUNT", None)
    env.update(extra)
    return env


def _run_helper(*args: str, env: dict | None = None, prefix: tuple = (),
                preexec_fn=None) -> list[str]:
    out = subprocess.run([*prefix, sys.executable, helpers.__file__, *args],
                         env=_child_env(**(env or {})), capture_output=True,
                         text=True, timeout=WAIT, preexec_fn=preexec_fn,
                         check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


# --- CPU count (3.13: os.process_cpu_count) ---------------------------------------

def test_pool_and_executor_default_to_the_cpus_the_process_may_use():
    """stdlib 3.13+: ``Pool()`` and ``ProcessPoolExecutor()`` size themselves
    with ``os.process_cpu_count()`` (the affinity mask); before 3.13 with
    ``os.cpu_count()``, the machine's.  ``cpu_count()`` stays the machine's.
    polyproc: the affinity mask on every Python (and a cgroup quota, below);
    ``cpu_count()`` the machine's."""
    taskset = shutil.which("taskset")   # util-linux
    if taskset:
        sizes = _run_helper("pool-size", prefix=(taskset, "-c", "0"))
    else:                               # what taskset does, done by hand
        sizes = _run_helper("pool-size",
                            preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    pool_size, executor_size, cpus, usable = sizes
    assert (pool_size, executor_size, usable) == ("1", "1", "1")
    assert int(cpus) == os.cpu_count()


def test_cpu_count_override_is_honoured_on_every_python():
    """stdlib 3.13+: ``PYTHON_CPU_COUNT=N`` (or ``-X cpu_count=N``) makes
    ``os.process_cpu_count()`` return N, so ``Pool()`` has N workers.
    polyproc: the same on every Python."""
    pool_size, executor_size, _, usable = _run_helper(
        "pool-size", env={"PYTHON_CPU_COUNT": "3"})
    assert (pool_size, executor_size, usable) == ("3", "3", "3")


def _cgroup_tree(root, proc_cgroup: str, files: dict) -> str:
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "self" / "cgroup").write_text(proc_cgroup)
    for path, text in files.items():
        target = root / "sys" / "fs" / "cgroup" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return str(root)


@pytest.mark.parametrize("proc_cgroup, files, quota", [
    # cgroup v2, a container seeing its own cgroup as the root
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),
    # v2, a limit set on a parent applies to the child; the tightest wins
    ("0::/a/b\n", {"a/cpu.max": "200000 100000\n",
                   "a/b/cpu.max": "max 100000\n"}, 2.0),
    ("0::/a/b\n", {"a/cpu.max": "400000 100000\n",
                   "a/b/cpu.max": "50000 100000\n"}, 0.5),
    # v1 (hybrid host): cpu,cpuacct controller, the host's path for a
    # container that sees its cgroup at the mount's root
    ("4:cpu,cpuacct:/docker/abc\n0::/\n",
     {"cpu,cpuacct/cpu.cfs_quota_us": "250000\n",
      "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 2.5),
    ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n",
                   "cpu/cpu.cfs_period_us": "100000\n"}, None),
    # nothing mounted, garbage
    ("0::/\n", {}, None),
    ("0::/\n", {"cpu.max": "lots\n"}, None),
])
def test_cgroup_cpu_quota_parsing(tmp_path, proc_cgroup, files, quota):
    """stdlib: no cgroup awareness (a container limited to 2 CPUs on a
    64-core host gets 64 workers).  polyproc: like loky, reads cgroup v2
    ``cpu.max`` and v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` of the
    process's cgroup and its ancestors."""
    root = _cgroup_tree(tmp_path, proc_cgroup, files)
    assert _cpu.cgroup_cpu_quota(root) == quota


def test_process_cpu_count_is_capped_by_the_quota(tmp_path, monkeypatch):
    """polyproc only: a quota of 0.5 CPU gives 1 worker; 1.5 gives 2 (rounded
    up), never more than the affinity mask allows."""
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.delenv("PYTHON_CPU_COUNT", raising=False)
    for quota, expected in (("50000 100000", 1), ("150000 100000", 2),
                            ("max 100000", affinity)):
        root = tmp_path / quota.split()[0]
        monkeypatch.setattr(_cpu, "_fs_root", _cgroup_tree(
            root, "0::/\n", {"cpu.max": quota}))
        assert polyproc.process_cpu_count() == min(expected, affinity)


# --- Process.interrupt (3.14) -------------------------------------------------------

def test_process_interrupt_sends_sigint(ctx):
    """stdlib 3.14: ``Process.interrupt()`` sends SIGINT; ``run()`` gets
    ``KeyboardInterrupt``, its finally clauses run, the exit code is 1.
    Before 3.14 there is no such method.  polyproc: the same on every
    Python, and ``p.exception`` is the ``KeyboardInterrupt``."""
    ready, q = ctx.Event(), ctx.Queue()
    p = ctx.Process(target=helpers.wait_for_interrupt, args=(ready, q))
    p.start()
    assert ready.wait(WAIT)
    p.interrupt()
    p.join(WAIT)
    assert p.exitcode == 1
    assert q.get(timeout=WAIT) == "finally ran"
    assert isinstance(p.exception, KeyboardInterrupt)


# --- Executor.terminate_workers / kill_workers (3.14) -------------------------------

def _stop_workers_case(ctx, tmp_path, stop, target=helpers.touch_then_block):
    release = str(tmp_path / "release")
    started = tmp_path / "started"
    started.mkdir()
    ex = polyproc.Executor(max_workers=2, mp_context=ctx)
    futures = [ex.submit(target, str(started), i, release) for i in range(12)]
    assert _manager_helpers.wait_until(lambda: len(os.listdir(started)) == 2, WAIT)
    workers = list(ex._processes.values())
    t0 = time.monotonic()
    getattr(ex, stop)()
    elapsed = time.monotonic() - t0
    # Running calls fail with BrokenProcessPool; the rest are cancelled and
    # never run.
    states = []
    for f in futures:
        if f.cancelled():
            states.append("cancelled")
        else:
            assert isinstance(f.exception(timeout=WAIT), BrokenProcessPool)
            states.append("broken")
    assert states.count("broken") >= 2 and "cancelled" in states
    cancelled = {i for i, s in enumerate(states) if s == "cancelled"}
    assert not cancelled & {int(n) for n in os.listdir(started)}
    assert all(not w.is_alive() for w in workers)
    with pytest.raises(RuntimeError):
        ex.submit(helpers.square, 2)
    ex.shutdown()           # still allowed, returns at once
    return workers, elapsed


@pytest.mark.parametrize("stop, signum", [("terminate_workers", signal.SIGTERM),
                                          ("kill_workers", signal.SIGKILL)])
def test_executor_terminate_and_kill_workers(ctx, tmp_path, stop, signum):
    """stdlib 3.14: ``ProcessPoolExecutor.terminate_workers()`` /
    ``kill_workers()`` shut the executor down with ``cancel_futures=True``
    and send SIGTERM / SIGKILL to every live worker: pending futures are
    cancelled, running ones fail with ``BrokenProcessPool``, later
    ``submit`` raises ``RuntimeError``.  Before 3.14 neither exists.
    polyproc: the same on every Python."""
    workers, _ = _stop_workers_case(ctx, tmp_path, stop)
    assert {w.exitcode for w in workers} == {-signum}


def test_terminate_workers_kills_a_worker_that_ignores_sigterm(fork_ctx, tmp_path):
    """stdlib 3.14: a worker that ignores SIGTERM keeps running after
    ``terminate_workers()``.  polyproc: it is killed (SIGKILL) after a
    grace period of half a second; the call returns once it is gone."""
    workers, elapsed = _stop_workers_case(fork_ctx, tmp_path, "terminate_workers",
                                          helpers.ignore_sigterm_then_block)
    assert {w.exitcode for w in workers} == {-signal.SIGKILL}
    assert elapsed < 5


# --- Executor.map(buffersize=) (3.14) ---------------------------------------------

def _counting(source, pulled: list):
    for item in source:
        pulled.append(item)
        yield item


@pytest.mark.parametrize("chunksize", [1, 3])
def test_executor_map_buffersize_is_lazy_over_endless_input(fork_ctx, chunksize):
    """stdlib 3.14: ``Executor.map(fn, it, buffersize=n)`` submits at most
    *n* tasks (chunks, for ``ProcessPoolExecutor``) whose results have not
    been yielded, so ``it`` may be endless; before 3.14 ``map`` collects
    the whole input first (an endless one hangs).  polyproc: the same on
    every Python."""
    pulled: list = []
    with polyproc.Executor(2, mp_context=fork_ctx) as ex:
        results = ex.map(helpers.square, _counting(itertools.count(), pulled),
                         chunksize=chunksize, buffersize=2)
        assert len(pulled) == 2 * chunksize       # only the first buffer
        got = [next(results) for _ in range(10 * chunksize)]
        assert got == [i * i for i in range(10 * chunksize)]
        # Never further ahead than the buffer (+ the chunk being yielded).
        assert len(pulled) <= (10 + 3) * chunksize
        results.close()                           # cancels the rest


def test_executor_map_buffersize_checks_and_order(fork_ctx):
    """stdlib 3.14: ``TypeError`` for a non-int buffersize, ``ValueError``
    below 1; results in order, an exception at its position.  polyproc:
    the same (also through ``Executor.options()``)."""
    with polyproc.Executor(2, mp_context=fork_ctx) as ex:
        with pytest.raises(TypeError):
            ex.map(helpers.square, range(3), buffersize=1.5)
        with pytest.raises(ValueError):
            ex.map(helpers.square, range(3), buffersize=0)
        assert list(ex.map(helpers.square, range(7), buffersize=3)) == \
            [i * i for i in range(7)]
        assert list(ex.options(retries=1).map(
            helpers.square, range(5), chunksize=2, buffersize=1)) == \
            [i * i for i in range(5)]
        with pytest.raises(TypeError):
            list(ex.map(helpers.square, [1, "x", 3], buffersize=1))


# --- Pool.imap / imap_unordered(buffersize=) (3.16) -------------------------------

@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_pool_imap_buffersize_bounds_submission(fork_ctx, method, chunksize):
    """stdlib 3.16 (gh-64192): ``imap(f, it, chunksize, buffersize=n)``
    takes at most *n* tasks from ``it`` that have not been yielded, so
    ``it`` may be endless; without it the whole input is consumed ahead.
    polyproc: the same on every Python; *n* counts chunks when *chunksize*
    is given (as the stdlib's task batches), tasks otherwise."""
    pulled: list = []
    with fork_ctx.Pool(2) as pool:
        results = getattr(pool, method)(
            helpers.square, _counting(itertools.count(), pulled), chunksize, 3)
        got = [next(results) for _ in range(40)]
        window = 3 * (chunksize or 1)
        assert len(pulled) <= 40 + window
        if method == "imap":
            assert got == [i * i for i in range(40)]
        else:
            assert len(set(got)) == 40
        # With the consumer idle, the input is not read further.
        before = len(pulled)
        assert results.next(timeout=WAIT) is not None
        assert len(pulled) <= before + window


def test_pool_imap_buffersize_errors_and_close(fork_ctx):
    """stdlib 3.16: ``TypeError``/``ValueError`` for a bad buffersize; a
    task's exception at its position; ``close()`` then ``join()`` on a
    partly consumed buffered imap does not hang (gh-155477): no more input
    is taken.  polyproc: the same."""
    with fork_ctx.Pool(2) as pool:
        with pytest.raises(TypeError):
            pool.imap(helpers.square, range(3), buffersize="2")
        with pytest.raises(ValueError):
            pool.imap_unordered(helpers.square, range(3), buffersize=0)
        results = pool.imap(helpers.square, [1, "x", 3], buffersize=1)
        assert next(results) == 1
        with pytest.raises(TypeError):
            next(results)                    # "x" * "x", at its position
        assert list(results) == [9]
    pool = fork_ctx.Pool(2)
    results = pool.imap(helpers.square, itertools.count(), buffersize=2)
    assert next(results) == 0
    pool.close()
    done = threading.Event()
    joiner = threading.Thread(target=lambda: (pool.join(), done.set()), daemon=True)
    joiner.start()
    assert done.wait(WAIT)
    joiner.join(WAIT)
    assert len(list(results)) <= 2       # what was taken before close()


# --- proxies: 3.13 and 3.14 additions -----------------------------------------------

def test_dict_proxy_operators(manager):
    """stdlib 3.14 (gh-103134): dict proxies support ``d | x``, ``x | d``,
    ``d |= x`` (``d`` stays the proxy), ``reversed(d)`` and ``fromkeys``;
    before 3.14 they raise ``TypeError``/``AttributeError``.  polyproc:
    every Python."""
    d = manager.dict(a=1)
    same = d
    d |= {"b": 2}
    assert d is same and d.copy() == {"a": 1, "b": 2}
    assert d | {"c": 3} == {"a": 1, "b": 2, "c": 3}
    assert {"z": 0} | d == {"z": 0, "a": 1, "b": 2}
    assert type(d | {}) is dict
    assert list(reversed(d)) == ["b", "a"]
    assert d.fromkeys("xy", 0) == {"x": 0, "y": 0}


def test_list_proxy_clear_and_copy(manager):
    """stdlib 3.14 (gh-103134): list proxies have ``clear()`` and ``copy()``
    (a plain list).  polyproc: every Python."""
    lst = manager.list([1, 2, 3])
    copy = lst.copy()
    assert copy == [1, 2, 3] and type(copy) is list
    lst.clear()
    assert len(lst) == 0 and copy == [1, 2, 3]


def test_sync_manager_set(manager):
    """stdlib 3.14 (gh-129949): ``SyncManager.set()`` makes a shared set
    (``SetProxy``; in-place operators keep the proxy).  polyproc: every
    Python, shared with child processes as the other types."""
    s = manager.set({1, 2})
    same = s
    s |= {3}
    s &= {2, 3, 4}
    s -= {4}
    s ^= {5}
    assert s is same and isinstance(s, SetProxy)
    assert s.copy() == {2, 3, 5}
    assert 2 in s and len(s) == 3 and s <= {2, 3, 5, 6}
    assert s | {9} == {2, 3, 5, 9} and sorted(s) == [2, 3, 5]
    s.add(7)
    s.discard(2)
    assert s.copy() == {3, 5, 7}
    empty = manager.set()
    assert len(empty) == 0


def test_lock_proxies_have_locked(manager):
    """stdlib 3.14 (gh-115942): managed ``Lock``, ``RLock`` and
    ``Condition`` proxies have ``locked()``.  polyproc: every Python."""
    for lock in (manager.Lock(), manager.RLock(), manager.Condition()):
        assert lock.locked() is False
        with lock:
            assert lock.locked() is True
        assert lock.locked() is False


def test_proxy_types_are_generic_and_registered_with_the_abcs(manager):
    """stdlib 3.13: ``ListProxy[int]``, ``DictProxy[str, int]`` are generic
    aliases; 3.14: list and dict proxies are ``MutableSequence`` /
    ``MutableMapping`` (and the set proxy, wrongly, a ``MutableMapping``,
    gh-142740).  polyproc: every Python, the set proxy a ``MutableSet``."""
    assert ListProxy[int].__origin__ is ListProxy
    assert DictProxy[str, int].__args__ == (str, int)
    assert isinstance(manager.list(), collections.abc.MutableSequence)
    assert isinstance(manager.dict(), collections.abc.MutableMapping)
    assert isinstance(manager.set(), collections.abc.MutableSet)


# --- synchronize.Lock.locked (3.14), SharedMemory(track=) (3.13) ------------------

def test_locks_and_semaphores_have_locked(ctx):
    """stdlib 3.14 (gh-115942, gh-132561): ``Lock``, ``RLock``,
    ``Semaphore`` and ``BoundedSemaphore`` have ``locked()``, true while
    any process holds them.  polyproc: every Python."""
    lock, holding, go = ctx.Lock(), ctx.Event(), ctx.Event()
    assert lock.locked() is False
    child = ctx.Process(target=helpers.hold_lock_until, args=(lock, holding, go))
    child.start()
    assert holding.wait(WAIT)
    assert lock.locked() is True                 # held by another process
    go.set()
    child.join(WAIT)
    assert lock.locked() is False
    rlock, sem = ctx.RLock(), ctx.BoundedSemaphore(2)
    with rlock, rlock:
        assert rlock.locked() is True
    assert rlock.locked() is False
    sem.acquire()
    assert sem.locked() is False                 # one permit left
    sem.acquire()
    assert sem.locked() is True
    sem.release()
    sem.release()


def test_shared_memory_untracked():
    """stdlib 3.13 (gh-82300): ``SharedMemory(..., track=False)`` is not
    registered with the resource tracker, so it outlives the program that
    created it; a tracked one is unlinked when that program exits (with a
    "leaked shared_memory" warning).  Before 3.13: ``TypeError``.
    polyproc: ``polyproc.shared_memory.SharedMemory(track=False)`` on
    every Python."""
    from polyproc.shared_memory import SharedMemory
    tracked, untracked = (f"pp_compat_{os.getpid()}_{kind}" for kind in ("t", "u"))
    out = subprocess.run([sys.executable, "-c", helpers.SHM_PROGRAM, tracked,
                          untracked], env=_child_env(), capture_output=True,
                         text=True, timeout=WAIT, check=False)
    assert out.returncode == 0, out.stderr

    def exists(name: str) -> bool:
        try:
            SharedMemory(name, track=False).close()
        except FileNotFoundError:
            return False
        return True

    try:
        # The program's tracker unlinks the tracked block once it exited...
        assert _manager_helpers.wait_until(lambda: not exists(tracked), WAIT)
        # ... and leaves the untracked one alone.
        assert exists(untracked)
    finally:
        for name in (tracked, untracked):
            if exists(name):
                SharedMemory(name, track=False).unlink()
    assert not exists(untracked)


# --- managed locks: a clean exit is not a crash -------------------------------------

def test_lock_of_a_child_that_exits_normally_stays_held(ctx):
    """stdlib: a managed ``Lock`` taken by a child that then exits normally
    stays held; another process may release it; a second ``release()``
    raises ``RuntimeError``.  polyproc: the same (a child *killed* while
    holding it has it released: test_lock_held_by_killed_client_is_released
    in test_managers_faults.py)."""
    with ctx.Manager() as m:
        lock, holding = m.Lock(), ctx.Event()
        baseline = m._number_of_objects()
        child = ctx.Process(target=helpers.take_lock_and_hold_objects,
                            args=(lock, m.list(), holding))
        child.start()
        child.join(WAIT)
        assert child.exitcode == 0 and holding.is_set()
        # The child's session has ended in the server (its list is gone)...
        assert _manager_helpers.wait_until(
            lambda: m._number_of_objects() == baseline, WAIT)
        # ... and its lock stays held, even past the server's poll.
        assert not _manager_helpers.wait_until(lambda: not lock.locked(),
                                               _HELD_POLL + 0.5)
        assert lock.acquire(False) is False
        lock.release()                       # another process may release it
        with pytest.raises(RuntimeError):
            lock.release()
        assert lock.acquire(timeout=WAIT)
        lock.release()


def test_lock_of_a_thread_that_ended_stays_held(manager):
    """stdlib: a managed ``Lock`` acquired by a thread that then ends stays
    held (each thread has its own connection; its closing means nothing).
    polyproc: the same; the lock is released for its holder only if the
    whole process crashes."""
    lock = manager.Lock()
    thread = threading.Thread(target=lock.acquire)
    thread.start()
    thread.join(WAIT)
    del thread              # its connection closes with its thread-local state
    assert not _manager_helpers.wait_until(lambda: not lock.locked(),
                                           _HELD_POLL + 0.5)
    lock.release()
    assert not lock.locked()


# --- serializer='xmlrpclib' -------------------------------------------------------

def _xmlrpc_round_trips(d, lst, value) -> None:
    d["t"] = (1, 2)
    d["n"] = None
    d["nested"] = {"a": [1, {"b": 2.5}]}
    d["b"] = b"xy"
    assert d["t"] == [1, 2]                    # a tuple arrives as a list
    assert d["nested"] == {"a": [1, {"b": 2.5}]}
    assert d["n"] is None
    assert isinstance(d["b"], xmlrpc.client.Binary) and d["b"].data == b"xy"
    lst.append((3, 4))
    lst.extend(["s", True])
    assert lst[0] == [3, 4] and len(lst) == 3
    value.set(7)
    assert value.get() == 7
    # What XML-RPC cannot carry fails in the caller, as the stdlib's does.
    with pytest.raises(TypeError, match="cannot marshal"):
        d["s"] = {1, 2}
    with pytest.raises(OverflowError):
        d["big"] = 2 ** 40
    with pytest.raises(TypeError, match="cannot marshal"):
        lst.append(object())
    # A result it cannot carry is a RemoteError (dict_keys), the call ran.
    with pytest.raises(polyproc.RemoteError):
        d.keys()
    assert len(d) == 4


def test_xmlrpclib_serializer_local(fork_ctx):
    """stdlib: ``Manager(serializer='xmlrpclib')`` restricts the values of
    calls to what XML-RPC carries (tuples become lists, bytes ``Binary``;
    a set or a big int raises ``TypeError``/``OverflowError`` in the
    caller).  polyproc refused it before; now the same values and errors
    (exceptions raised by methods still arrive as themselves, where the
    stdlib's become a ``TypeError``)."""
    with SyncManager(serializer="xmlrpclib", ctx=fork_ctx) as m:
        d, lst, value = m.dict(), m.list(), m.Value("i", 5)
        assert value.value == 5
        _xmlrpc_round_trips(d, lst, value)
        q = m.Queue()
        q.put((1, "a"))
        assert q.get(timeout=WAIT) == [1, "a"]   # through the server, marshalled
        with pytest.raises(TypeError, match="cannot marshal"):
            q.put({1})
        with pytest.raises(KeyError):
            d["missing"]
        with pytest.raises(TypeError, match="cannot marshal"):
            m.list([{1}])                        # create arguments too
    with pytest.raises(KeyError):
        SyncManager(serializer="json")


def test_xmlrpclib_serializer_remote_server_and_client():
    """stdlib: a ``BaseManager`` server with ``serializer='xmlrpclib'`` and
    a client of another process that connects with the same serializer.
    polyproc: the same (over polyproc's authenticated frames)."""
    key = os.urandom(16)
    server = subprocess.Popen([sys.executable, helpers.__file__, "serve-xmlrpc",
                               key.hex()], stdout=subprocess.PIPE,
                              env=_child_env(), text=True)
    try:
        port = int(server.stdout.readline())
        m = helpers.xml_client(port, key)
        _xmlrpc_round_trips(m.get_dict(), m.get_list(), m.get_value())
        again = helpers.xml_client(port, key)
        assert again.get_dict()["t"] == [1, 2]      # one server, shared state
    finally:
        server.kill()
        server.wait(WAIT)
