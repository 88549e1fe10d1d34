"""polyproc.Pool: the stdlib's API, and the failures the stdlib hangs on."""
from __future__ import annotations

import contextlib
import functools
import gc
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path

import psutil
import pytest

import polyproc
from polyproc import (InitializerError, RemoteError, RemoteTraceback,
                      SerializationError, TaskTimeoutError, WorkerLostError)

import _pool_helpers as h
from conftest import expect_fork_warning

SCRIPTS = Path(__file__).parent / "scripts"


@pytest.fixture
def pool(ctx_fs):
    p = ctx_fs.Pool(2)
    yield p
    p.terminate()
    p.join()


def wait_gone(pids, seconds):
    """True once none of *pids* is running (zombies count as gone), within *seconds*."""
    def running(pid):
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:  # gone (and reaped) between two looks
            return False

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(running(p) for p in pids):
            return True
        time.sleep(0.02)
    return False


# -- the stdlib API --------------------------------------------------------

def test_api_basics(ctx):
    with ctx.Pool(2) as p:
        assert p.apply(h.add, (2, 3)) == 5
        assert p.apply(h.add, (), {"a": 1, "b": 2}) == 3
        assert p.map(h.square, range(10)) == [x * x for x in range(10)]
        assert p.map(h.square, iter(range(10)), 3) == [x * x for x in range(10)]
        assert p.starmap(h.add, [(1, 2), (3, 4)]) == [3, 7]
        assert list(p.imap(h.square, range(50))) == [x * x for x in range(50)]
        assert list(p.imap(h.square, iter(range(50)), chunksize=1)) == [x * x for x in range(50)]
        assert sorted(p.imap_unordered(h.square, iter(range(50)))) == [x * x for x in range(50)]
        assert p.map(h.square, []) == []
        assert list(p.imap(h.square, [])) == []
        r = p.map_async(h.square, range(5))
        assert r.get(timeout=10) == [0, 1, 4, 9, 16]
        assert r.ready() and r.successful()
        r = p.starmap_async(h.add, [(1, 1)])
        assert r.get(10) == [2]


def test_callbacks_run_in_parent(pool):
    got, errors = [], []
    done = threading.Event()
    pool.apply_async(h.square, (3,), callback=lambda v: (got.append((v, os.getpid())), done.set()))
    assert done.wait(10)
    assert got == [(9, os.getpid())]
    r = pool.apply_async(h.raise_value_error, (1,), error_callback=errors.append)
    with pytest.raises(ValueError):
        r.get(10)
    assert isinstance(errors[0], ValueError)
    m = pool.map_async(h.square, range(4), callback=got.append)
    m.wait(10)
    assert got[-1] == [0, 1, 4, 9]


def test_result_states_and_timeouts(pool):
    r = pool.apply_async(h.sleep_for, (0.5,))
    with pytest.raises(ValueError):
        r.successful()
    with pytest.raises(polyproc.TimeoutError):
        r.get(timeout=0.01)
    it = pool.imap(h.sleep_for, [0.5])
    with pytest.raises(polyproc.TimeoutError):
        it.next(timeout=0.01)
    assert r.get(10) == 0.5
    assert it.next(timeout=10) == 0.5
    with pytest.raises(StopIteration):
        it.next(timeout=1)


def test_exception_carries_remote_traceback(pool):
    with pytest.raises(ValueError, match="bad value 3") as info:
        pool.apply(h.raise_value_error, (3,))
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "raise_value_error" in str(info.value.__cause__)


def test_misuse_errors_match_stdlib(ctx_fs):
    p = ctx_fs.Pool(1)
    with pytest.raises(ValueError):
        p.join()  # still running
    with pytest.raises(ValueError):
        p.map(h.square, [1], chunksize=0)
    with pytest.raises(NotImplementedError):
        import pickle
        pickle.dumps(p)
    p.close()
    with pytest.raises(ValueError):
        p.apply_async(h.square, (1,))
    with pytest.raises(ValueError):
        p.map(h.square, [1])
    p.join()
    with pytest.raises(ValueError):
        ctx_fs.Pool(0)
    with pytest.raises(TypeError):
        ctx_fs.Pool(1, initializer=3)
    with pytest.raises(ValueError):
        ctx_fs.Pool(1, maxtasksperchild=0)


def test_close_join_finishes_work(ctx_fs):
    p = ctx_fs.Pool(2)
    results = [p.apply_async(h.square, (i,)) for i in range(20)]
    it = p.imap(h.square, iter(range(30)))
    p.close()
    p.join()
    assert [r.get(0) for r in results] == [i * i for i in range(20)]
    assert list(it) == [i * i for i in range(30)]
    assert all(w.exitcode is not None for w in p._pool) if p._pool else True


def test_terminate_fails_pending_instead_of_hanging(ctx_fs):
    p = ctx_fs.Pool(1)
    r = p.apply_async(h.sleep_for, (30,))
    p.terminate()
    with pytest.raises(polyproc.ProcessError):
        r.get(timeout=5)
    p.join()


def test_thread_pool_same_api():
    from polyproc.pool import ThreadPool
    lock = threading.Lock()  # unpicklable: fine for threads
    with ThreadPool(3) as tp:
        assert tp.map(lambda x: x + 1, range(5)) == [1, 2, 3, 4, 5]
        assert tp.apply(lambda held: held.locked(), (lock,)) is False
        assert sorted(tp.imap_unordered(h.square, iter(range(10)))) == [x * x for x in range(10)]
        with pytest.raises(ValueError, match="bad value"):
            tp.apply(h.raise_value_error, (1,))


# -- worker deaths ---------------------------------------------------------

@pytest.mark.parametrize("killer", [h.kill_on, h.exit_on, h.segfault_on],
                         ids=["SIGKILL", "os._exit", "segfault"])
def test_worker_death_fails_only_its_task(pool, killer):
    out = list_outcomes(pool.imap(killer_bound(killer), range(40), chunksize=4))
    assert len(out) == 40
    for i, (ok, value) in enumerate(out):
        if i == 13:
            assert not ok and isinstance(value, WorkerLostError), value
            assert value.pid is not None and value.exitcode is not None
            assert "[task 13]" in str(value)
        else:
            assert ok and value == i
    # The pool goes on, with a replacement worker.
    assert pool.map(h.square, range(10)) == [x * x for x in range(10)]


def test_death_in_a_chunk_of_microsecond_tasks_blames_the_right_task(pool):
    """Tasks under 20 us run without a per-task progress record (_scheduler.py):
    a death there is resolved by re-running the chunk's tasks one by one."""
    import functools
    killer = functools.partial(h.kill_on, bad=10_013)
    assert pool.map(killer, range(2000)) == list(range(2000))  # timing learnt: fast
    out = list_outcomes(pool.imap(killer, range(10_000, 10_100), chunksize=50))
    assert len(out) == 100
    for i, (ok, value) in enumerate(out):
        if i == 13:
            assert isinstance(value, WorkerLostError) and "[task 13]" in str(value)
        else:
            assert ok and value == 10_000 + i


def killer_bound(killer):
    import functools
    return functools.partial(killer, bad=13)


def list_outcomes(iterator):
    out = []
    while True:
        try:
            out.append((True, next(iterator)))
        except StopIteration:
            return out
        except Exception as exc:
            out.append((False, exc))


def test_map_keeps_results_and_raises_at_end(pool):
    import functools
    with pytest.raises(WorkerLostError):
        pool.map(functools.partial(h.kill_on, bad=5), range(20))
    r = pool.map_async(functools.partial(h.kill_on, bad=5), range(20))
    r.wait(20)
    assert r.ready() and not r.successful()
    assert pool.apply(h.square, (4,)) == 16


def test_exit_code_and_signal_named(pool):
    r = pool.apply_async(h.kill_self, (0,))
    with pytest.raises(WorkerLostError) as info:
        r.get(10)
    assert info.value.exitcode == -signal.SIGKILL
    assert "SIGKILL" in str(info.value) and "OOM" in str(info.value)
    r = pool.apply_async(h.exit_on, (1, 1, 7))
    with pytest.raises(WorkerLostError) as info:
        r.get(10)
    assert info.value.exitcode == 7


@pytest.mark.timeout(60)
def test_random_kills_every_task_exactly_once(ctx_fs):
    """SIGKILL workers at random moments of a long map: each task has one outcome."""
    rng = random.Random(1234)
    n = 300
    kill_points = set(rng.sample(range(10, n - 40), 6))
    with ctx_fs.Pool(2) as p:
        it = p.imap(h.identity_after, range(n), chunksize=3)
        outcomes = []
        killed = 0
        while True:
            if len(outcomes) in kill_points:
                kill_points.discard(len(outcomes))
                victims = [w.pid for w in p._pool if w.exitcode is None]
                if victims:
                    os.kill(rng.choice(victims), signal.SIGKILL)
                    killed += 1
            try:
                outcomes.append((True, it.next(timeout=10)))
            except StopIteration:
                break
            except WorkerLostError as exc:
                outcomes.append((False, exc))
    assert killed > 0
    assert len(outcomes) == n
    for i, (ok, value) in enumerate(outcomes):
        assert (ok and value == i) or (not ok and f"[task {i}]" in str(value)), (i, value)


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_raises_at_once_when_the_pool_is_terminated(method):
    """next() used to wait its whole timeout (for ever without one) once the
    pool had been terminated or had broken."""
    with polyproc.get_context("fork").Pool(2) as p:
        it = getattr(p, method)(h.sleep_for, [30] * 4)
        p.terminate()
        started = time.monotonic()
        with pytest.raises(polyproc.ProcessError, match="terminated"):
            it.next(timeout=20)
        assert time.monotonic() - started < 5
        with pytest.raises(StopIteration):
            it.next(timeout=5)


def test_retries_run_task_again(pool, tmp_path):
    marker = tmp_path / "first"
    assert pool.apply(h.die_first_time, (str(marker),), retries=1) == "ok"
    marker2 = tmp_path / "second"
    with pytest.raises(WorkerLostError):
        pool.apply(h.die_first_time, (str(marker2),))
    assert pool.map(h.die_first_time, [str(tmp_path / "m")], retries=2) == ["ok"]


# -- things that can't be pickled ------------------------------------------

def test_unpicklable_argument_fails_its_own_task(pool):
    # As in the stdlib: apply_async returns, get() raises; map raises at
    # the call (it waits); imap raises at the item's position.
    lock = threading.Lock()
    result = pool.apply_async(h.square, (lock,))
    with pytest.raises(SerializationError, match="lock"):
        result.get(10)
    with pytest.raises(SerializationError, match="task 2"):
        pool.map(h.square, [1, 2, lock, 4])
    for items in ([1, lock, 3], iter([1, lock, 3])):
        out = list_outcomes(pool.imap(h.square, items))
        assert out[0] == (True, 1) and out[2] == (True, 9)
        assert isinstance(out[1][1], SerializationError)
    assert pool.map(h.square, range(3)) == [0, 1, 4]


def test_unpicklable_result_fails_that_task(pool):
    out = list_outcomes(pool.imap(h.return_lock, range(4), chunksize=4))
    assert [o[0] for o in out] == [True, False, True, True]
    assert isinstance(out[1][1], SerializationError)
    assert "lock" in str(out[1][1])
    assert pool.apply(h.square, (5,)) == 25


def test_result_that_fails_to_unpickle_in_the_parent(pool):
    r = pool.apply_async(h.return_unloadable, (2,))
    with pytest.raises(SerializationError, match="could not be unpickled in the parent"):
        r.get(10)
    out = list_outcomes(pool.imap(h.return_unloadable, range(6), chunksize=1))
    assert len(out) == 6
    assert all(ok and v == i for i, (ok, v) in enumerate(out) if i != 2)
    assert isinstance(out[2][1], SerializationError)
    assert pool.map(h.square, range(4)) == [0, 1, 4, 9]


@pytest.mark.parametrize("raiser", [h.raise_custom_init, h.raise_unpicklable_attr])
def test_unrebuildable_exception_arrives(pool, raiser):
    with pytest.raises(Exception) as info:
        pool.apply(raiser, (1,), )
    exc = info.value
    name = raiser.__name__.replace("raise_", "")
    assert type(exc).__name__ in ("CustomInitError", "UnpicklableAttrError", "RemoteError")
    if isinstance(exc, RemoteError):
        assert exc.type_name.endswith(("CustomInitError", "UnpicklableAttrError"))
    assert ("custom 1 extra" in str(exc)) or ("holds a lock 1" in str(exc)), name
    assert pool.apply(h.square, (2,)) == 4


@pytest.mark.parametrize("raiser,kind", [(h.raise_system_exit, SystemExit),
                                         (h.raise_keyboard_interrupt, KeyboardInterrupt)])
def test_base_exceptions_are_task_errors(pool, raiser, kind):
    with pytest.raises(kind):
        pool.apply_async(raiser, (1,)).get(10)
    assert pool.apply(h.square, (3,)) == 9


def test_lambdas_and_closures(ctx_fs):
    with ctx_fs.Pool(2) as p:
        assert p.map(lambda x: x + 1, range(3)) == [1, 2, 3]
        assert p.map(h.make_closure(3), range(3)) == [0, 3, 6]


def test_fatal_exception_while_unpickling_a_result_fails_only_those_tasks(ctx):
    """SystemExit or KeyboardInterrupt raised while the parent rebuilds a
    result (a ``__reduce__`` callable, a ``__setstate__``) is that task's
    ``SerializationError``, with the exception as its cause; the scheduler
    thread goes on and the next call on the same pool works.  (The stdlib's
    Pool loses its result-handler thread there and hangs for ever.)"""
    with ctx.Pool(2) as p:
        for make, kind in ((h.ExitsWhenUnpickled, SystemExit),
                           (h.InterruptsWhenUnpickled, KeyboardInterrupt)):
            r = p.apply_async(h.return_on, (1, 1, make))
            with pytest.raises(SerializationError, match="could not be unpickled") as info:
                r.get(10)
            assert isinstance(info.value.__cause__, kind)
            assert p.map(h.square, range(4)) == [0, 1, 4, 9]


def test_system_exit_while_the_worker_pickles_a_result(ctx):
    """A result whose ``__reduce__`` raises SystemExit in the worker fails
    that task with that SystemExit, as if the task had raised it, and the
    worker stays up (same pid) to run the next tasks.  This mirrors
    ``concurrent.futures.ProcessPoolExecutor``, whose worker catches any
    BaseException while sending a result and sends it as the task's
    exception.  The stdlib's ``multiprocessing.Pool`` catches only
    ``Exception`` there: its worker exits, and that task's ``get()`` hangs."""
    with ctx.Pool(1) as p:
        pid = p.apply(h.pid_of)
        with pytest.raises(SystemExit) as info:
            p.apply_async(h.return_on, (1, 1, h.ExitsWhenPickled)).get(10)
        assert info.value.code == 5
        # Submitted together, so that their results mostly share a message.
        outcomes = [p.apply_async(h.return_on, (i, 4, h.ExitsWhenPickled))
                    for i in range(6)]
        got = []
        for r in outcomes:
            try:
                got.append(r.get(10))
            except SystemExit as exc:
                got.append(("SystemExit", exc.code))
        assert got == [0, 1, 2, 3, ("SystemExit", 5), 5]
        assert p.apply(h.pid_of) == pid


@pytest.mark.parametrize("cls", [h.ExitsWhenRebuiltElsewhere, h.ExitsWhenPickledError])
def test_exception_that_raises_system_exit_when_pickled_or_rebuilt(pool, cls):
    """A task's exception whose pickling (in the worker) or unpickling (in
    the parent) raises SystemExit still arrives, as a ``RemoteError`` with
    its type name and message; neither the worker nor the scheduler thread
    is lost."""
    with pytest.raises(RemoteError, match="raised by the task") as info:
        pool.apply(h.raise_it, (cls,))
    assert info.value.type_name.endswith(cls.__qualname__)
    assert pool.map(h.square, range(3)) == [0, 1, 4]


# -- what the pool keeps of a call: nothing stale, nothing alive ----------------

def test_callables_pickled_by_value_are_sent_as_they_are_now(pool):
    """A bound method, a callable object and a partial carry their state:
    each call sends it as it is at that call (the stdlib does), never a
    copy cached by an earlier call."""
    import functools
    holder = h.Holder(1)
    box = [1]
    partial = functools.partial(h.first_of, box)
    assert [pool.apply(holder.get), pool.apply(holder), pool.apply(partial)] == [1, 1, 1]
    holder.x = 2
    box[0] = 2
    assert [pool.apply(holder.get), pool.apply(holder), pool.apply(partial)] == [2, 2, 2]
    holder.x = 3
    assert pool.map(holder.get.__func__, [holder]) == [3]


@pytest.mark.parametrize("make_pool", ["Pool", "ThreadPool"])
def test_nothing_submitted_is_kept_alive_after_its_task(ctx_fs, make_pool):
    """Once a task is done, the pool holds neither its callable nor its
    arguments: dropping the caller's last reference frees them."""
    p = ctx_fs.Pool(2) if make_pool == "Pool" else polyproc.pool.ThreadPool(2)
    with p:
        fn, arg = h.Tracked(), h.Box(1)
        fn_ref, arg_ref = weakref.ref(fn), weakref.ref(arg)
        assert p.apply_async(fn, (arg,)).get(10) == 1
        assert p.map(fn, [arg, arg]) == [1, 1]
        del fn, arg
        assert h.collected_within(fn_ref)
        assert h.collected_within(arg_ref)


def test_a_worker_keeps_nothing_of_a_finished_task(ctx_fs):
    """Workers cache unpickled functions by their bytes, but a callable
    pickled by value only while its Dispatch runs: a worker does not keep
    a bound method's instance (or a partial's arguments) alive, nor the
    result it sent."""
    with ctx_fs.Pool(1) as p:
        assert p.apply(h.Tracked()) == 0
        assert p.apply(h.live_tracked) == 0
        assert isinstance(p.apply(h.make_tracked), h.Tracked)
        assert p.apply(h.live_tracked) == 0


def test_a_closure_over_a_large_array_reaches_every_worker(pool):
    """A function pickled by value travels with each chunk: its bytes must
    load any number of times, in any worker (never a one-shot shared-memory
    payload), and the pool's table of task times keeps no large copy."""
    import numpy as np
    big = np.arange(1 << 18, dtype=np.int64)  # 2 MiB, captured by value
    assert pool.map(lambda i: int(big[i]), range(40), chunksize=1) == list(range(40))
    assert pool.apply(h.square, (2,)) == 4  # the map's results are all handled
    keys = pool._backend._times.by_key
    assert max(len(k) for k in keys if isinstance(k, bytes)) < 64 * 1024


# -- timeouts, memory, initializer ------------------------------------------

@pytest.mark.timeout(30)
def test_timeout_kills_only_that_task(pool):
    slow = pool.apply_async(h.sleep_for, (30,), timeout=0.3)
    quick = [pool.apply_async(h.square, (i,)) for i in range(5)]
    start = time.monotonic()
    with pytest.raises(TaskTimeoutError) as info:
        slow.get(10)
    assert time.monotonic() - start < 5
    assert isinstance(info.value, polyproc.TimeoutError)
    assert [q.get(10) for q in quick] == [0, 1, 4, 9, 16]
    assert pool.map(h.sleep_for, [0.01, 0.02], timeout=5) == [0.01, 0.02]


def test_max_memory_per_child_replaces_worker(ctx_fs):
    with ctx_fs.Pool(1, max_memory_per_child=400 * 2**20) as p:
        first = p.apply(h.hoard_memory, (10,))
        assert p.apply(h.pid_of) == first  # under the ceiling: same worker
        big = p.apply(h.hoard_memory, (450,))
        assert big == first
        assert p.apply(h.pid_of) != first  # over it: replaced before the next task


def test_maxtasksperchild(ctx_fs):
    with ctx_fs.Pool(1, maxtasksperchild=1) as p:
        pids = [p.apply(h.pid_of) for _ in range(3)]
    assert len(set(pids)) == 3


def test_initializer_runs_in_each_worker(ctx_fs):
    with ctx_fs.Pool(2, initializer=h.set_initialized, initargs=("yes",)) as p:
        assert p.apply(h.read_initialized) == ["yes"]


def test_initializer_error_is_clear_and_final(ctx_fs):
    p = ctx_fs.Pool(2, initializer=h.failing_initializer)
    try:
        with pytest.raises(InitializerError, match="failing_initializer") as info:
            p.map(h.square, range(4))
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(InitializerError):
            p.apply(h.square, (1,))
        # No respawn loop: the pool stops starting workers.
        assert p._backend._worker_counter <= 4
    finally:
        p.terminate()


def test_unclosed_pool_warns_and_cleans_up(ctx_fs):
    p = ctx_fs.Pool(2)
    pids = [w.pid for w in p._pool]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del p
        gc.collect()
    categories = [w.category for w in caught]
    del caught  # a recorded warning holds the pool (source=) alive
    gc.collect()
    assert ResourceWarning in categories
    assert wait_gone(pids, 5)


def test_progress_bar(ctx_fs, capfd):
    import functools
    with ctx_fs.Pool(2) as p:
        with pytest.raises(WorkerLostError):
            p.map(functools.partial(h.kill_on, bad=3), range(20), progress=True)
        assert list(p.imap(h.square, iter(range(7)), progress=True)) == [x * x for x in range(7)]
    err = capfd.readouterr().err
    assert "20/20" in err and "7/7" in err


# -- the parent's own troubles ----------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("method,wait_in", [("fork", "map"), ("spawn", "map"),
                                            ("fork", "imap"), ("fork", "get")])
def test_ctrl_c_interrupts_map_and_terminates_workers(method, wait_in):
    # Its own process group, which the test interrupts as a terminal's Ctrl-C
    # does: the parent and every worker receive SIGINT.
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "pool_sigint.py"), method,
                             wait_in],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 2
    assert "task started" in proc.stdout.readline()  # the parent waits in map
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    elapsed = time.monotonic() - sent
    assert "interrupted" in out
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert elapsed < 3, elapsed
    assert err.count("Traceback") <= 1, err  # the parent's, not one per worker
    assert wait_gone(pids, 2)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_parent_sigkill_takes_workers_down(method):
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "pool_parent_killed.py"), method],
                            stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    proc.kill()
    proc.wait(5)
    assert wait_gone(pids, 1.5)


@pytest.mark.timeout(40)
def test_an_idle_worker_takes_new_work_before_a_busy_one_prefetches_it(ctx_fs, tmp_path):
    # Otherwise a call waits behind a long (or hung, or interrupted and
    # still running) task while another worker sits idle.
    hold = tmp_path / "hold"
    hold.touch()
    with ctx_fs.Pool(2) as pool:
        h.wait_workers_ready(pool._backend)
        blocked = pool.apply_async(h.square_unless_held, (4, str(tmp_path)))
        assert pool.apply_async(h.square, (3,)).get(timeout=10) == 9
        assert pool.map(h.square, range(4), chunksize=1) == [0, 1, 4, 9]
        hold.unlink()
        assert blocked.get(timeout=20) == 16


@pytest.mark.timeout(40)
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_ctrl_c_from_the_terminal_then_the_pool_runs_on(method):
    # A terminal's Ctrl-C reaches the whole process group; the script
    # catches the interrupt and uses the pool again (pool_sigint.py).
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "pool_sigint.py"), method,
                             "map", "reuse"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        proc.stdout.readline()  # the workers' pids: the pool is up
        # Tasks run (one per worker at most), and the parent waits for the
        # map's results; the order of those lines varies.
        before: list[str] = []
        while not ("parent waiting" in before
                   and any(x.startswith("task started") for x in before)):
            line = proc.stdout.readline()
            assert line, f"the script ended early after {before}"
            before.append(line.strip())
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [line for line in out.splitlines() if not line.startswith("task started")]
    assert proc.returncode == 0, err
    assert lines[:4] == ["interrupted", str([x * x for x in range(10)]),
                         str([x * x for x in range(5)]), "49"], out
    assert "Traceback" not in err, err


def _interrupt_then_reuse(pool, tmp_path, wait_in: str) -> None:
    """Ctrl-C while waiting in *wait_in*; then the pool must serve new calls.

    "submit": Ctrl-C while ``map`` still submits its tasks.  "feeding":
    while ``imap``'s feeder thread prepares a piece of a generator, which
    it submits after the interrupt was handled.

    The interrupted call's tasks block while ``tmp_path/hold`` exists, so
    anything of it still queued or running after the interrupt would hold
    up the calls that follow it, and its workers would stay alive.
    """
    hold = tmp_path / "hold"
    hold.touch()
    fn = functools.partial(h.square_unless_held, hold_dir=str(tmp_path))
    started_0 = str(tmp_path / "started-0")
    ctrl_c = h.CtrlC("_pool/results.py", lambda: os.path.exists(started_0))
    handled = str(tmp_path / "interrupt-handled")
    with h.ctrl_c_raises(), pytest.raises(KeyboardInterrupt):
        if wait_in == "submit":
            # Pickling item 2 waits for task 0 to run, then sends SIGINT.
            items = [0, 1, h.InterruptWhenPickled(started_0, 2), 3, 4, 5, 6, 7]
            pool.map(fn, items, chunksize=1)
        if wait_in == "feeding":
            item_2 = h.InterruptWhenPickled(started_0, 2, resume_when=handled)
            list(pool.imap(fn, iter([0, 1, item_2, 3, 4, 5, 6, 7]), chunksize=1))
        ctrl_c.start()
        if wait_in == "map":
            pool.map(fn, range(8), chunksize=1)
        elif wait_in == "imap":
            list(pool.imap(fn, iter(range(8)), chunksize=1))
        else:
            pool.apply_async(fn, (0,)).get()
    open(handled, "w").close()
    if ctrl_c.sent_at is not None:
        assert time.monotonic() - ctrl_c.sent_at < 2, "KeyboardInterrupt came late"
    # started-<x> is renamed into place whole; started-<x>.tmp is being written.
    started_pids = [int(p.read_text()) for p in tmp_path.glob("started-*")
                    if p.suffix != ".tmp"]
    assert started_pids and pool._state == "RUN"
    assert pool.map_async(h.square, range(20)).get(timeout=20) == [x * x for x in range(20)]
    assert pool.apply_async(h.square, (7,)).get(timeout=20) == 49
    assert wait_gone(started_pids, 5), "workers of the interrupted call still run"
    for late in (2, 7):
        assert not (tmp_path / f"started-{late}").exists(), f"cancelled task {late} started"
    hold.unlink()
    # The notebook: run the interrupted cell again, get the whole result.
    assert pool.map(fn, range(8)) == [x * x for x in range(8)]


@pytest.mark.timeout(40)
def test_ctrl_c_in_map_cancels_the_call_and_the_pool_runs_on(ctx, tmp_path):
    with ctx.Pool(2) as pool:
        _interrupt_then_reuse(pool, tmp_path, "map")


@pytest.mark.timeout(40)
@pytest.mark.parametrize("wait_in", ["imap", "get", "submit", "feeding"])
def test_ctrl_c_in_imap_get_or_submission_cancels_the_call(ctx_fs, tmp_path, wait_in):
    with ctx_fs.Pool(2) as pool:
        _interrupt_then_reuse(pool, tmp_path, wait_in)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("call", ["map", "starmap", "apply", "imap"])
def test_ctrl_c_between_submitting_and_waiting_cancels_the_call(tmp_path, call):
    # The instant after a blocking call's tasks went in and before it waits
    # for them: neither the submission's nor the result's handler covers it.
    # imap: inside imap() still, as its feeder thread's start() returns (on
    # a loaded machine the feeder submits and the workers start its tasks
    # before the caller's thread gets out of start()).
    hold = tmp_path / "hold"
    hold.touch()
    fn = functools.partial(h.square_unless_held, hold_dir=str(tmp_path))
    submits = {"map": "_map_async", "starmap": "_map_async", "apply": "apply_async",
               "imap": "start"}
    with polyproc.get_context("fork").Pool(1) as pool:
        with h.ctrl_c_raises(), pytest.raises(KeyboardInterrupt), \
                h.interrupt_when_returning(submits[call], str(tmp_path / "started-0")):
            if call == "map":
                pool.map(fn, range(4), chunksize=1)
            elif call == "starmap":
                pool.starmap(fn, [(x,) for x in range(4)], chunksize=1)
            elif call == "imap":
                list(pool.imap(fn, iter(range(4)), chunksize=1))
            else:
                pool.apply(fn, (0,))
        # The one worker ran the interrupted task: it was stopped, replaced.
        assert pool.apply_async(h.square, (3,)).get(timeout=20) == 9
        assert not (tmp_path / "started-1").exists()


@pytest.mark.timeout(40)
def test_ctrl_c_leaves_other_calls_results_alone(ctx_fs, tmp_path):
    # One worker: the other call's task waits behind the interrupted one
    # (in the pool's queue, or prefetched by the worker that is killed).
    hold = tmp_path / "hold"
    hold.touch()
    fn = functools.partial(h.square_unless_held, hold_dir=str(tmp_path))
    with ctx_fs.Pool(1) as pool:
        interrupted = pool.map_async(fn, [0, 1])
        other = pool.apply_async(h.square, (5,))
        ctrl_c = h.CtrlC("_pool/results.py", (tmp_path / "started-0").exists)
        with h.ctrl_c_raises(), pytest.raises(KeyboardInterrupt):
            ctrl_c.start()
            interrupted.get()
        assert other.get(timeout=20) == 25
        with pytest.raises(polyproc.ProcessError, match="cancelled"):
            interrupted.get(timeout=5)


@pytest.mark.timeout(30)
def test_ctrl_c_in_thread_pool_map_skips_its_queued_tasks(tmp_path):
    from polyproc.pool import ThreadPool
    hold = tmp_path / "hold"
    hold.touch()
    fn = functools.partial(h.square_unless_held, hold_dir=str(tmp_path))
    with ThreadPool(2) as pool:
        ctrl_c = h.CtrlC("_pool/results.py", (tmp_path / "started-0").exists)
        with h.ctrl_c_raises(), pytest.raises(KeyboardInterrupt):
            ctrl_c.start()
            pool.map(fn, range(8), chunksize=1)
        assert time.monotonic() - ctrl_c.sent_at < 2
        hold.unlink()  # threads cannot be stopped: the running tasks finish
        assert pool.map_async(h.square, range(5)).get(timeout=10) == [0, 1, 4, 9, 16]
        assert pool.apply_async(h.square, (7,)).get(timeout=10) == 49
        assert not (tmp_path / "started-7").exists(), "a cancelled task started"


def test_terminated_pool_refuses_calls_at_once(ctx_fs):
    pool = ctx_fs.Pool(1)
    pool.terminate()
    started = time.monotonic()
    for call in (lambda: pool.apply_async(h.square, (2,)),
                 lambda: pool.map_async(h.square, [1]),
                 lambda: pool.imap(h.square, iter([1]))):
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    assert time.monotonic() - started < 1
    pool.join()


def test_pool_terminated_by_its_finalizer_refuses_calls(ctx_fs):
    # At interpreter exit the pool's finalizer terminates it while the
    # object lives on: later calls (another atexit hook, a daemon thread)
    # must not be accepted into a dead scheduler.
    pool = ctx_fs.Pool(1)
    pool._terminate()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply_async(h.square, (2,))
    pool.terminate()


# -- a pool inherited by a forked child --------------------------------------

def _assert_inherited_pool_outcomes(outcomes: dict) -> None:
    for name in ("apply_async", "map", "map_async", "imap", "with",
                 "unfinished.get", "unfinished.wait"):
        assert outcomes[name][0] == "InheritedPoolError", (name, outcomes[name])
    for name in ("close", "join", "terminate"):
        assert outcomes[name][0] == "ok", (name, outcomes[name])
    slowest = max(outcomes.items(), key=lambda item: item[1][1])
    assert slowest[1][1] < 1, f"{slowest[0]} took {slowest[1][1]:.2f} s in the child"


@pytest.mark.timeout(40)
def test_forked_child_using_the_parents_pool_raises_at_once(ctx_fs, tmp_path):
    hold = tmp_path / "hold"
    hold.touch()
    pool = ctx_fs.Pool(2)
    try:
        pids = sorted(p.pid for p in pool._pool)
        unfinished = pool.apply_async(h.square_unless_held, (3, str(tmp_path)))
        # A child that inherits a live pool: the fork is made while the
        # pool's scheduler thread runs, on purpose.
        _assert_inherited_pool_outcomes(h.report_of_fork_child(
            lambda: h.inherited_pool_outcomes(pool, unfinished),
            around_fork=expect_fork_warning))
        # The parent's pool, its workers and its pending result are untouched.
        assert sorted(p.pid for p in pool._pool) == pids
        hold.unlink()
        assert unfinished.get(timeout=20) == 9
        assert pool.map(h.square, range(10)) == [x * x for x in range(10)]
    finally:
        pool.terminate()
        pool.join()


@pytest.mark.timeout(40)
def test_fork_process_using_the_parents_pool_raises_at_once(tmp_path):
    ctx = polyproc.get_context("fork")
    hold = tmp_path / "hold"
    hold.touch()
    # The child must inherit a live pool and a live executor.  The second
    # one, and the child's Process.start() below, fork while the others'
    # PoolScheduler threads run: those are paused for the forks
    # (_process/fork_pause.py), so no fork warns (the suite's guard checks).
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ctx.Pool(2))
        ex = stack.enter_context(ctx.Executor(1))
        pids = sorted(p.pid for p in pool._pool)
        result = pool.apply_async(h.square_unless_held, (3, str(tmp_path)))
        future = ex.submit(h.square_unless_held, 4, str(tmp_path))
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(target=h.report_inherited_outcomes,
                        args=(pool, result, ex, future, writer))
        p.start()
        writer.close()
        try:
            assert reader.poll(20), "the child hangs"
            pool_outcomes, executor_outcomes = reader.recv()
        finally:
            p.join(10)
            if p.exitcode is None:
                p.kill()
                p.join()
        assert p.exitcode == 0
        _assert_inherited_pool_outcomes(pool_outcomes)
        for name in ("submit", "map", "unfinished.result", "unfinished.exception"):
            assert executor_outcomes[name][0] == "InheritedPoolError", (
                name, executor_outcomes[name])
        assert executor_outcomes["shutdown"][0] == "ok"
        assert max(seconds for _, seconds in executor_outcomes.values()) < 1
        assert sorted(p.pid for p in pool._pool) == pids
        hold.unlink()
        assert result.get(timeout=20) == 9 and future.result(timeout=20) == 16
        assert pool.map(h.square, range(5)) == [0, 1, 4, 9, 16]
        assert ex.submit(h.square, 6).result(timeout=20) == 36


@pytest.mark.timeout(40)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_forked_child_exiting_normally_leaves_the_parents_workers(method):
    # A bare os.fork() child that exits through the interpreter's normal
    # exit runs multiprocessing's atexit hook with a copy of its parent's
    # list of children (pool_fork_child.py).
    proc = subprocess.run([sys.executable, str(SCRIPTS / "pool_fork_child.py"), method],
                          check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["child:", "InheritedPoolError", "InheritedPoolError",
                                   "parent:", "workers", "unchanged", "ok"], proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.timeout(60)
def test_missing_main_guard_is_one_clear_error():
    proc = subprocess.run([sys.executable, str(SCRIPTS / "pool_no_guard.py")],
                          capture_output=True, text=True, timeout=50,
                          cwd=str(SCRIPTS))
    assert proc.returncode != 0
    assert "if __name__ == '__main__':" in proc.stderr
    # One message per worker of the pool (2), then the pool's own error:
    # no respawn loop.
    assert 1 <= proc.stderr.count("was being imported by a new process") <= 2, proc.stderr
    assert "ProcessError: a pool worker died while starting" in proc.stderr


def test_a_pool_does_not_leave_the_fork_server_deaf_to_ctrl_c():
    """A Pool that is the first to start the fork server must not start it
    while its workers' SIGINT shield is up: the fork server would keep
    SIG_IGN, and every Process the program later starts through it would
    ignore Ctrl-C and ``Process.interrupt()`` (seen: ``join`` timed out,
    exit code None).  Run in a fresh interpreter, whose fork server the Pool
    starts."""
    proc = subprocess.run([sys.executable, str(SCRIPTS / "forkserver_after_pool.py")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1", (proc.stdout, proc.stderr[-2000:])


@pytest.mark.timeout(30)
def test_a_worker_config_unpickled_in_a_fork_server_child_makes_sigint_harmless():
    # A fork server's child gets Python's SIGINT handler back; a pool
    # worker's config, unpickled with its process object before any of the
    # worker's code runs, must make a terminal's Ctrl-C harmless from there
    # on (test_ctrl_c_from_the_terminal_then_the_pool_runs_on[forkserver]
    # failed about one run in eight on a loaded machine without it).  In
    # the process that pickled it, nothing changes.
    import pickle

    from polyproc._pool._backends.process.worker import WorkerConfig
    config = pickle.dumps(WorkerConfig(None, pickle.dumps(()), None, None))
    assert pickle.loads(config) == WorkerConfig(None, pickle.dumps(()), None, None)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ctx = polyproc.get_context("forkserver")
    queue = ctx.SimpleQueue()
    child = ctx.Process(target=h.sigint_handler_after_loading, args=(config, queue))
    child.start()
    try:
        assert queue.get() == "harmless"
    finally:
        child.join(10)
