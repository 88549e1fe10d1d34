"""polyproc.Pool: the stdlib's API, and the failures the stdlib hangs on."""
from __future__ import annotations

import gc
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import psutil
import pytest

import polyproc
from polyproc import (InitializerError, RemoteError, RemoteTraceback,
                      SerializationError, TaskTimeoutError, WorkerLostError)

import _pool_helpers as h

SCRIPTS = Path(__file__).parent / "scripts"


@pytest.fixture
def pool(ctx_fs):
    p = ctx_fs.Pool(2)
    yield p
    p.terminate()
    p.join()


def wait_gone(pids, seconds):
    """True once none of *pids* is running (zombies count as gone), within *seconds*."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
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
        assert tp.apply(lambda l: l.locked(), (lock,)) is False
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

def test_unpicklable_argument_fails_at_the_call(pool):
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="lock"):
        pool.apply_async(h.square, (lock,))
    with pytest.raises(SerializationError, match="task 2"):
        pool.map(h.square, [1, 2, lock, 4])
    with pytest.raises(SerializationError):
        pool.imap(h.square, [1, lock])
    # From a generator the failure comes at that item's position.
    out = list_outcomes(pool.imap(h.square, iter([1, lock, 3])))
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
