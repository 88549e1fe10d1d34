"""polyproc.Executor: concurrent.futures semantics on polyproc's scheduler.

Task functions live in tests/_executor_helpers.py (spawned workers import
them).  Waits are bounded by ``result(timeout=...)``; nothing sleeps to
synchronise: a task that must stay running blocks until the test creates
a file.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import gc
import os
import pickle
import random
import signal
import subprocess
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool

import pytest

import _executor_helpers as h
import _pool_helpers as ph
import polyproc
from conftest import expect_fork_warning
from polyproc import (RemoteError, SerializationError, TaskTimeoutError,
                      WorkerLostError)
from polyproc.executor import Executor, ExecutorInitializerError

WAIT = 30  # bound on any single result wait, far above what each takes


def _executor(ctx, workers=2, **kwargs) -> Executor:
    return Executor(max_workers=workers, mp_context=ctx, **kwargs)


@pytest.fixture
def fork_ctx():
    return polyproc.get_context("fork")


# -- drop-in --------------------------------------------------------------

@pytest.mark.timeout(30)
def test_polyproc_executor_is_a_concurrent_futures_executor():
    with polyproc.Executor(max_workers=2) as ex:
        assert isinstance(ex, cf.Executor)
        assert type(ex).__module__ == "polyproc.executor"
        assert ex.submit(h.square, 6).result(WAIT) == 36
    spawn_ex = polyproc.get_context("spawn").Executor(1)
    try:
        assert spawn_ex._mp_context.get_start_method() == "spawn"
    finally:
        spawn_ex.shutdown()


@pytest.mark.timeout(30)
def test_bad_arguments_raise_like_the_stdlib(fork_ctx):
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        Executor(0, mp_context=fork_ctx)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        Executor(1, mp_context=fork_ctx, initializer=3)
    with pytest.raises(TypeError, match="max_tasks_per_child must be an integer"):
        Executor(1, mp_context=fork_ctx, max_tasks_per_child="2")
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
        Executor(1, mp_context=fork_ctx, max_tasks_per_child=0)
    with _executor(fork_ctx, 1) as ex:
        with pytest.raises(ValueError, match="chunksize must be >= 1"):
            ex.map(h.square, [1], chunksize=0)
        with pytest.raises(ValueError, match="timeout must be a positive"):
            ex.options(timeout=-1)
        with pytest.raises(ValueError, match="retries must be an int"):
            ex.options(retries=-1)
        with pytest.raises(TypeError, match="not callable"):
            ex.submit(42)
        with pytest.raises(TypeError, match="cannot be passed between processes"):
            pickle.dumps(ex)


# -- happy paths ------------------------------------------------------------

@pytest.mark.timeout(60)
def test_submit_map_and_errors(ctx_fs):
    with _executor(ctx_fs) as ex:
        assert ex.submit(h.add, 1, 2, c=3).result(WAIT) == 6
        futures = [ex.submit(h.square, i) for i in range(50)]
        assert [f.result(WAIT) for f in futures] == [i * i for i in range(50)]
        error = ex.submit(h.fail_with, "boom").exception(WAIT)
        assert isinstance(error, ValueError) and str(error) == "boom"
        assert "fail_with" in str(error.__cause__)  # the worker's traceback
        assert list(ex.map(h.square, range(20))) == [i * i for i in range(20)]
        assert list(ex.map(h.add, range(23), range(23), chunksize=7)) == \
            [2 * i for i in range(23)]
        assert list(ex.map(h.square, [], chunksize=3)) == []


@pytest.mark.timeout(30)
def test_map_raises_at_the_failed_position(fork_ctx):
    with _executor(fork_ctx) as ex:
        for chunksize in (1, 4):
            it = ex.map(h.add, [1, 2, "x", 4], [1, 1, 1, 1], chunksize=chunksize)
            if chunksize == 1:
                assert next(it) == 2 and next(it) == 3
            with pytest.raises(TypeError):
                list(it)


@pytest.mark.timeout(30)
def test_wait_and_as_completed(fork_ctx):
    with _executor(fork_ctx) as ex:
        futures = [ex.submit(h.square, i) for i in range(10)]
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=WAIT)) == \
            [i * i for i in range(10)]
        bad = ex.submit(h.fail_with, "first")
        done, _ = cf.wait([bad], timeout=WAIT, return_when=cf.FIRST_EXCEPTION)
        assert bad in done


@pytest.mark.timeout(30)
def test_done_callbacks_run(fork_ctx):
    seen = []
    called = threading.Event()
    with _executor(fork_ctx) as ex:
        future = ex.submit(h.square, 9)
        future.add_done_callback(lambda f: (seen.append(f.result()), called.set()))
        assert called.wait(WAIT)
    assert seen == [81]


@pytest.mark.timeout(30)
def test_a_done_callback_raising_system_exit_breaks_nothing(fork_ctx, tmp_path, caplog):
    """Done-callbacks run in the scheduler thread: one that raises
    SystemExit is logged as the stdlib logs a failing callback, the
    callbacks after it still run, and the executor goes on."""
    release = str(tmp_path / "release")
    called = threading.Event()

    def exits(_):
        raise SystemExit(3)

    with _executor(fork_ctx, workers=1) as ex:
        future = ex.submit(h.block_until, release, value=9)
        future.add_done_callback(exits)  # added while it runs: run by the scheduler
        future.add_done_callback(lambda f: called.set())
        h.touch(release)
        assert called.wait(10)
        assert future.result(WAIT) == 9
        assert ex.submit(h.square, 3).result(WAIT) == 9
    assert "exception calling callback" in caplog.text


@pytest.mark.timeout(60)
def test_asyncio_run_in_executor(ctx_fs):
    async def main(ex):
        loop = asyncio.get_running_loop()
        one = await loop.run_in_executor(ex, h.square, 7)
        many = await asyncio.wait_for(
            asyncio.gather(*(loop.run_in_executor(ex, h.square, i) for i in range(20))),
            WAIT)
        with pytest.raises(WorkerLostError):
            await asyncio.wait_for(loop.run_in_executor(ex, h.kill_self), WAIT)
        after = await loop.run_in_executor(ex, h.add, 1, 2)
        return one, many, after

    with _executor(ctx_fs) as ex:
        one, many, after = asyncio.run(main(ex))
    assert one == 49 and many == [i * i for i in range(20)] and after == 3


@pytest.mark.timeout(60)
def test_lambdas_and_closures_via_cloudpickle(ctx_fs):
    offset = 10
    with _executor(ctx_fs) as ex:
        assert ex.submit(lambda x: x + 1, 1).result(WAIT) == 2
        assert ex.submit(lambda: offset * 2).result(WAIT) == 20
        assert list(ex.map(lambda a, b: a * b + offset, [1, 2], [3, 4])) == [13, 18]


@pytest.mark.timeout(60)
def test_initializer_runs_in_every_worker(ctx_fs):
    with _executor(ctx_fs, initializer=h.set_global, initargs=("ready",)) as ex:
        assert set(ex.map(h.get_global, range(8))) == {"ready"}


@pytest.mark.timeout(30)
def test_failing_initializer_breaks_the_executor_clearly(fork_ctx):
    with _executor(fork_ctx, initializer=h.failing_initializer) as ex:
        try:  # the future fails, or submit raises if the workers failed first
            error = ex.submit(h.square, 2).exception(WAIT)
        except BrokenProcessPool as exc:
            error = exc
        assert isinstance(error, ExecutorInitializerError)
        assert isinstance(error, (polyproc.InitializerError, BrokenProcessPool))
        assert isinstance(error.__cause__, RuntimeError)
        assert "initializer broke" in str(error.__cause__)
        with pytest.raises(BrokenProcessPool):
            ex.submit(h.square, 3)


@pytest.mark.timeout(30)
def test_max_tasks_per_child_replaces_workers(fork_ctx):
    with _executor(fork_ctx, 1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(h.pid_of_worker).result(WAIT) for _ in range(6)]
    assert len(set(pids)) == 3
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]


@pytest.mark.timeout(30)
def test_max_memory_per_child_replaces_workers(fork_ctx):
    # Any worker is over a 1-byte ceiling: each is replaced after one task.
    with _executor(fork_ctx, 1, max_memory_per_child=1) as ex:
        pids = [ex.submit(h.pid_of_worker).result(WAIT) for _ in range(3)]
    assert len(set(pids)) == 3
    with pytest.raises(ValueError, match="max_memory_per_child"):
        Executor(1, mp_context=fork_ctx, max_memory_per_child=0)


# -- a worker dies --------------------------------------------------------------

@pytest.mark.timeout(60)
def test_sigkill_fails_only_its_own_future(ctx):
    with _executor(ctx) as ex:
        ex.submit(h.square, 0).result(WAIT)  # workers up
        before = [ex.submit(h.square, i) for i in range(20)]
        started = time.monotonic()
        doomed = ex.submit(h.kill_self)
        after = [ex.submit(h.square, i) for i in range(20, 40)]
        error = doomed.exception(WAIT)
        took = time.monotonic() - started
        assert isinstance(error, WorkerLostError)
        assert isinstance(error, BrokenProcessPool)  # what stdlib code catches
        assert error.exitcode == -signal.SIGKILL
        assert "SIGKILL" in str(error) and "kill_self" in str(error)
        assert took < 5, f"the lost worker was reported after {took:.1f} s"
        assert [f.result(WAIT) for f in before + after] == [i * i for i in range(40)]
        assert ex.submit(h.add, 2, 3).result(WAIT) == 5


@pytest.mark.timeout(60)
def test_os_exit_fails_only_its_own_future(ctx_fs):
    with _executor(ctx_fs) as ex:
        others = [ex.submit(h.square, i) for i in range(10)]
        error = ex.submit(h.exit_now, 3).exception(WAIT)
        assert isinstance(error, WorkerLostError) and error.exitcode == 3
        assert "os._exit" in str(error)
        assert [f.result(WAIT) for f in others] == [i * i for i in range(10)]
        assert ex.submit(h.square, 5).result(WAIT) == 25


@pytest.mark.timeout(30)
def test_segfault_fails_only_its_own_future(fork_ctx):
    with _executor(fork_ctx) as ex:
        others = [ex.submit(h.square, i) for i in range(10)]
        error = ex.submit(h.segfault).exception(WAIT)
        assert isinstance(error, WorkerLostError)
        assert error.exitcode == -signal.SIGSEGV and "segmentation fault" in str(error)
        assert [f.result(WAIT) for f in others] == [i * i for i in range(10)]
        assert ex.submit(h.square, 5).result(WAIT) == 25


@pytest.mark.timeout(30)
def test_sigkill_inside_map_fails_only_that_position(fork_ctx):
    with _executor(fork_ctx) as ex:
        results = []
        it = ex.map(h.square_or_kill, range(10), [6] * 10)
        for _ in range(6):
            results.append(next(it))
        with pytest.raises(WorkerLostError):
            next(it)
        assert results == [i * i for i in range(6)]
        assert list(ex.map(h.square, range(4))) == [0, 1, 4, 9]


@pytest.mark.timeout(60)
def test_retries_run_a_killed_task_again(ctx_fs, tmp_path):
    with _executor(ctx_fs) as ex:
        marker = str(tmp_path / "killed-once")
        assert ex.options(retries=1).submit(h.kill_once, marker).result(WAIT) == "survived"
        again = str(tmp_path / "killed-again")
        with pytest.raises(WorkerLostError):
            ex.submit(h.kill_once, again).result(WAIT)  # retries=0: fails
        assert os.path.exists(again)
        in_map = str(tmp_path / "killed-in-map")
        assert list(ex.map(h.kill_once, [in_map], retries=1)) == ["survived"]


@pytest.mark.timeout(60)
def test_workers_killed_from_outside_lose_no_work(ctx_fs):
    """SIGKILL from outside at three random points of a run: every task still completes.

    A worker killed while running a task makes that task run again (it has
    retries left); one killed between tasks loses nothing at all.
    """
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    with _executor(ctx_fs) as ex:
        futures = [ex.options(retries=3).submit(h.sleep_then_return, 0.002, i) for i in range(150)]
        for k in sorted(rng.sample(range(5, 140), 3)):
            futures[k].result(WAIT)
            pids = list(ex._processes)
            assert pids
            # A worker killed at the previous point may be gone, its
            # replacement not listed yet: killing it again is a no-op.
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(pids), signal.SIGKILL)
        assert [f.result(WAIT) for f in futures] == list(range(150)), f"seed {seed}"


@pytest.mark.timeout(30)
def test_timeout_kills_the_task_not_the_executor(fork_ctx):
    with _executor(fork_ctx) as ex:
        started = time.monotonic()
        slow = ex.options(timeout=0.5).submit(h.sleep_then_return, 60)
        quick = [ex.submit(h.square, i) for i in range(5)]
        error = slow.exception(WAIT)
        assert isinstance(error, TaskTimeoutError)
        assert isinstance(error, polyproc.TimeoutError)
        assert time.monotonic() - started < 10
        assert [f.result(WAIT) for f in quick] == [0, 1, 4, 9, 16]
        assert ex.options(timeout=5).submit(h.square, 3).result(WAIT) == 9


# -- pickling failures, both directions -------------------------------------------

@pytest.mark.timeout(60)
def test_unpicklable_argument_fails_its_future(ctx_fs):
    # As ProcessPoolExecutor: submit and map return; result() and the
    # map iterator raise, at that call's position.
    with _executor(ctx_fs) as ex:
        with pytest.raises(SerializationError, match="lock"):
            ex.submit(h.square, threading.Lock()).result(WAIT)
        results = ex.map(h.square, [1, 2, threading.Lock()])
        assert next(results) == 1 and next(results) == 4
        with pytest.raises(SerializationError, match="task 2"):
            next(results)
        with pytest.raises(SerializationError):
            ex.submit(h.HoldsALock().method).result(WAIT)  # the function itself
        assert ex.submit(h.square, 4).result(WAIT) == 16


@pytest.mark.timeout(60)
def test_unpicklable_result_fails_that_future(ctx_fs):
    with _executor(ctx_fs) as ex:
        error = ex.submit(h.return_unpicklable).exception(WAIT)
        assert isinstance(error, SerializationError)
        assert "lock" in str(error).lower()
        assert ex.submit(h.square, 4).result(WAIT) == 16


@pytest.mark.timeout(60)
def test_exception_that_cannot_be_rebuilt_comes_back(ctx_fs):
    with _executor(ctx_fs) as ex:
        error = ex.submit(h.raise_bad_init).exception(WAIT)
        assert isinstance(error, (RemoteError, h.BadInitError))
        assert "BadInitError" in str(error) or isinstance(error, h.BadInitError)
        assert "needs two arguments" in str(error)
        assert ex.submit(h.square, 4).result(WAIT) == 16


@pytest.mark.timeout(60)
def test_argument_that_fails_to_unpickle_in_the_worker(ctx_fs):
    with _executor(ctx_fs) as ex:
        error = ex.submit(h.square, h.FailsToUnpickle("worker")).exception(WAIT)
        assert isinstance(error, SerializationError)
        assert "refuses to be unpickled (worker)" in str(error)
        assert ex.submit(h.square, 4).result(WAIT) == 16


@pytest.mark.timeout(30)
def test_exception_that_cannot_be_pickled_comes_back(fork_ctx):
    with _executor(fork_ctx) as ex:
        error = ex.submit(h.raise_unpicklable_exception).exception(WAIT)
        assert isinstance(error, (RemoteError, ValueError))
        assert "carries a lock" in str(error)
        assert ex.submit(h.square, 4).result(WAIT) == 16


@pytest.mark.timeout(30)
def test_result_that_fails_to_unpickle_in_the_parent(fork_ctx):
    with _executor(fork_ctx) as ex:
        error = ex.submit(h.return_fails_to_unpickle).exception(WAIT)
        assert isinstance(error, SerializationError)
        assert "refuses to be unpickled (parent)" in str(error)
        assert ex.submit(h.square, 4).result(WAIT) == 16


@pytest.mark.timeout(60)
def test_fatal_exceptions_around_results_fail_only_their_future(ctx):
    """SystemExit while the parent unpickles a result: that future's
    ``SerializationError`` (the stdlib's executor breaks, failing every
    future with ``BrokenProcessPool``).  SystemExit while the worker pickles
    a result: that future's exception is the SystemExit, as in
    ``ProcessPoolExecutor``.  Either way the next calls work."""
    with _executor(ctx, workers=1) as ex:
        pid = ex.submit(h.pid_of_worker).result(WAIT)
        error = ex.submit(ph.return_on, 1, 1, ph.ExitsWhenUnpickled).exception(WAIT)
        assert isinstance(error, SerializationError)
        assert isinstance(error.__cause__, SystemExit)
        error = ex.submit(ph.return_on, 1, 1, ph.ExitsWhenPickled).exception(WAIT)
        assert isinstance(error, SystemExit) and error.code == 5
        assert list(ex.map(h.square, range(4))) == [0, 1, 4, 9]
        assert ex.submit(h.pid_of_worker).result(WAIT) == pid


# -- what the executor keeps: nothing of a finished call ----------------------------

@pytest.mark.timeout(30)
def test_a_submitted_callable_is_not_kept_alive(fork_ctx):
    with _executor(fork_ctx) as ex:
        fn, arg = ph.Tracked(), ph.Box(1)
        fn_ref, arg_ref = weakref.ref(fn), weakref.ref(arg)
        assert ex.submit(fn, arg).result(WAIT) == 1
        assert list(ex.map(fn, [arg, arg])) == [1, 1]
        del fn, arg
        assert ph.collected_within(fn_ref) and ph.collected_within(arg_ref)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_iterator_keeps_no_yielded_result(fork_ctx, chunksize):
    """A result consumed from ``map`` can be collected while the iterator
    is still alive, as with the stdlib's ``Executor.map``."""
    with _executor(fork_ctx) as ex:
        results = ex.map(ph.make_box, range(4), chunksize=chunksize)
        first = next(results)
        assert first.value == 0
        ref = weakref.ref(first)
        del first
        assert ph.collected_within(ref)
        assert [box.value for box in results] == [1, 2, 3]


# -- cancel, shutdown, map timeout -------------------------------------------------

@pytest.mark.timeout(30)
def test_cancelled_futures_never_run(fork_ctx, tmp_path):
    release = str(tmp_path / "release")
    with _executor(fork_ctx, 1) as ex:
        try:
            blocker = ex.submit(h.block_until, release, 20, "done")
            paths = [str(tmp_path / f"ran-{i}") for i in range(8)]
            futures = [ex.submit(h.touch, p, i) for i, p in enumerate(paths)]
            assert not blocker.cancel() and blocker.running()
            cancelled = [f.cancel() for f in futures]
            assert cancelled[-1], "the last of 8 queued calls must still be cancellable"
        finally:
            h.touch(release)
        assert blocker.result(WAIT) == "done"
    # shutdown(wait=True) has returned: everything that runs has run.
    for i, (f, path, was_cancelled) in enumerate(zip(futures, paths, cancelled)):
        assert f.cancelled() == was_cancelled
        assert os.path.exists(path) == (not was_cancelled), f"call {i}"
        if not was_cancelled:
            assert f.result(0) == i
    with pytest.raises(cf.CancelledError):
        futures[-1].result(0)


@pytest.mark.timeout(30)
def test_wait_sees_a_cancelled_future_at_once(fork_ctx, tmp_path):
    """cancel() of a queued call wakes wait()/as_completed() while workers are busy."""
    release = str(tmp_path / "release")
    with _executor(fork_ctx, 1) as ex:
        try:
            blocker = ex.submit(h.block_until, release, 20)
            queued = [ex.submit(h.square, i) for i in range(8)]
            assert queued[-1].cancel()
            done, _ = cf.wait([queued[-1]], timeout=5)
            assert queued[-1] in done, "wait() missed a cancelled future"
            assert next(cf.as_completed([queued[-1]], timeout=5)) is queued[-1]
            assert not blocker.done()
        finally:
            h.touch(release)
        assert [f.result(WAIT) for f in queued[:-1]] == [i * i for i in range(7)]


@pytest.mark.timeout(30)
def test_shutdown_cancel_futures(fork_ctx, tmp_path):
    release = str(tmp_path / "release")
    ex = _executor(fork_ctx, 1)
    try:
        blocker = ex.submit(h.block_until, release, 20, "done")
        paths = [str(tmp_path / f"ran-{i}") for i in range(8)]
        futures = [ex.submit(h.touch, p, i) for i, p in enumerate(paths)]
        ex.shutdown(wait=False, cancel_futures=True)
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            ex.submit(h.square, 1)
        # Cancelled futures are done at once: wait() sees them.
        done, _ = cf.wait(futures[-1:], timeout=WAIT)
        assert futures[-1].cancelled() and futures[-1] in done
    finally:
        h.touch(release)
    ex.shutdown(wait=True)
    assert blocker.result(0) == "done"
    assert any(f.cancelled() for f in futures)
    for i, (f, path) in enumerate(zip(futures, paths)):
        assert f.done()
        assert os.path.exists(path) == (not f.cancelled()), f"call {i}"
    assert not ex._processes  # workers gone after shutdown(wait=True)


@pytest.mark.timeout(30)
def test_shutdown_waits_for_pending_work(fork_ctx):
    ex = _executor(fork_ctx)
    futures = [ex.submit(h.sleep_then_return, 0.01, i) for i in range(20)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result(0) for f in futures] == list(range(20))
    with pytest.raises(RuntimeError):
        list(ex.map(h.square, [1]))


@pytest.mark.timeout(30)
def test_map_timeout_raises_and_cancels_the_rest(fork_ctx, tmp_path):
    release = str(tmp_path / "release")
    with _executor(fork_ctx, 1) as ex:
        try:
            started = time.monotonic()
            it = ex.map(h.block_until, [release] * 10, [20] * 10, timeout=0.5)
            with pytest.raises(cf.TimeoutError):
                next(it)
            took = time.monotonic() - started
            assert 0.4 < took < 10
        finally:
            h.touch(release)
        it.close()
        assert ex.submit(h.square, 3).result(WAIT) == 9


# -- interpreter exit and Ctrl-C -----------------------------------------------------

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
_SCRIPT_HEAD = f"""
import signal, sys
# Ctrl-C must raise KeyboardInterrupt here even when the test run itself was
# started with SIGINT ignored (a shell's background job): ignored signals are
# inherited through exec.
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {_TESTS_DIR!r})
import _executor_helpers as h
import _pool_helpers as ph
import polyproc
ex = polyproc.Executor(1, mp_context=polyproc.get_context(sys.argv[1]))
"""


def _run_script(body: str, *args: str) -> subprocess.Popen:
    import sys
    return subprocess.Popen([sys.executable, "-c", _SCRIPT_HEAD + body, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(60)
def test_work_submitted_without_shutdown_completes_at_exit(ctx_fs, tmp_path):
    path = str(tmp_path / "done")
    proc = _run_script("ex.submit(h.touch_after, 0.3, sys.argv[2])\n",
                       ctx_fs.get_start_method(), path)
    _out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert os.path.exists(path), "the interpreter exited before the submitted call ran"


@pytest.mark.timeout(40)
def test_ctrl_c_while_waiting_exits_promptly_and_kills_workers(ctx_fs, tmp_path):
    import psutil
    never = str(tmp_path / "never")
    proc = _run_script(
        "ex.submit(h.square, 1).result(30)\n"  # the worker is up
        "fs = [ex.submit(h.block_until, sys.argv[2], 50) for _ in range(5)]\n"
        "print(*ex._processes, flush=True)\n"
        "fs[0].result()\n",
        ctx_fs.get_start_method(), never)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert pids, proc.stderr.read()
        workers = [psutil.Process(pid) for pid in pids]
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=WAIT)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in proc.stderr.read()
    assert took < 5, f"exit took {took:.1f} s after Ctrl-C"
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, "a worker outlived its interrupted parent"


@pytest.mark.timeout(40)
def test_workers_exit_when_the_parent_is_sigkilled(ctx_fs):
    import psutil
    proc = _run_script(
        "ex.submit(h.square, 1).result(30)\n"
        "print(*ex._processes, flush=True)\n"
        "h.block_until('/nonexistent/never', 30)\n",
        ctx_fs.get_start_method())
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert pids, proc.stderr.read()
        workers = [psutil.Process(pid) for pid in pids]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Zombies count as gone: whether a reparented zombie is reaped at once
    # depends on this machine's init, not on polyproc.
    deadline = time.monotonic() + 1.5
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        time.sleep(0.01)
    for p in alive:
        p.kill()
    assert not alive, "workers outlived their SIGKILLed parent by more than 1.5 s"


# -- Ctrl-C while waiting, then more work ----------------------------------------
# concurrent.futures semantics: Ctrl-C in result() cancels nothing; leaving
# map's iterator cancels the calls not handed to a worker yet, and the calls
# already running finish.  Either way the executor takes new work.

@pytest.mark.timeout(40)
def test_ctrl_c_in_result_then_the_executor_runs_on(ctx, tmp_path):
    release = str(tmp_path / "release")
    ex = _executor(ctx, workers=2)
    try:
        ph.wait_workers_ready(ex._core.backend)  # the new work must find one idle
        blocked = ex.submit(h.block_until, release, 20, "released")
        ctrl_c = ph.CtrlC("concurrent/futures/_base.py")
        with ph.ctrl_c_raises(), pytest.raises(KeyboardInterrupt):
            ctrl_c.start()
            blocked.result()
        assert time.monotonic() - ctrl_c.sent_at < 2
        assert ex.submit(h.square, 3).result(WAIT) == 9
        assert list(ex.map(h.square, range(10), timeout=WAIT)) == [x * x for x in range(10)]
        h.touch(release)
        assert blocked.result(WAIT) == "released"
    finally:
        ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(h.square, 3)


@pytest.mark.timeout(40)
def test_ctrl_c_in_map_iteration_then_the_same_map_again(ctx, tmp_path):
    # One worker, two calls in its window: the rest of the map waits in the
    # executor, and leaving the iterator by Ctrl-C cancels it.
    hold = tmp_path / "hold"
    hold.touch()
    dirs = [str(tmp_path)] * 8
    ex = _executor(ctx, workers=1)
    try:
        ctrl_c = ph.CtrlC("concurrent/futures/_base.py", (tmp_path / "started-0").exists)
        with ph.ctrl_c_raises(), pytest.raises(KeyboardInterrupt):
            ctrl_c.start()
            for _ in ex.map(ph.square_unless_held, range(8), dirs):
                pass
        assert time.monotonic() - ctrl_c.sent_at < 2
        hold.unlink()  # the calls already running finish
        assert ex.submit(h.square, 3).result(WAIT) == 9
        assert not (tmp_path / "started-7").exists(), "a cancelled call ran"
        # The notebook: run the interrupted cell again, get the whole result.
        assert list(ex.map(ph.square_unless_held, range(8), dirs, timeout=WAIT)) == [
            x * x for x in range(8)]
    finally:
        ex.shutdown()


# -- an executor inherited by a forked child --------------------------------------

@pytest.mark.timeout(40)
def test_forked_child_using_the_parents_executor_raises_at_once(ctx_fs, tmp_path):
    hold = tmp_path / "hold"
    hold.touch()
    ex = _executor(ctx_fs, workers=2)
    try:
        assert ex.submit(h.square, 1).result(WAIT) == 1
        pids = sorted(ex._processes)
        unfinished = ex.submit(ph.square_unless_held, 3, str(tmp_path))
        # A child that inherits a live executor: the fork is made while the
        # executor's scheduler thread runs, on purpose.
        outcomes = ph.report_of_fork_child(
            lambda: ph.inherited_executor_outcomes(ex, unfinished),
            around_fork=expect_fork_warning)
        for name in ("submit", "map", "unfinished.result", "unfinished.exception"):
            assert outcomes[name][0] == "InheritedPoolError", (name, outcomes[name])
        assert outcomes["shutdown"][0] == "ok"
        assert max(seconds for _, seconds in outcomes.values()) < 1, outcomes
        # The parent's executor, its workers and its pending future are untouched.
        assert sorted(ex._processes) == pids
        hold.unlink()
        assert unfinished.result(WAIT) == 9
        assert ex.submit(h.square, 5).result(WAIT) == 25
    finally:
        ex.shutdown()


def _running(process) -> bool:
    import psutil
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.timeout(30)
def test_dropped_executor_stops_its_workers(fork_ctx):
    import psutil
    ex = _executor(fork_ctx)
    assert ex.submit(h.square, 3).result(WAIT) == 9
    workers = [psutil.Process(pid) for pid in ex._processes]
    del ex
    gc.collect()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, "an executor dropped without shutdown() kept its workers"


@pytest.mark.timeout(30)
def test_submit_keywords_reach_the_function(fork_ctx):
    """timeout=/retries= of submit belong to fn, as with ProcessPoolExecutor."""
    with _executor(fork_ctx, 1) as ex:
        assert ex.submit(h.keywords_back, timeout=7, retries=2).result(WAIT) == {
            "timeout": 7, "retries": 2}
        assert ex.options(retries=1).submit(h.keywords_back, timeout=3).result(WAIT) == {
            "timeout": 3}
