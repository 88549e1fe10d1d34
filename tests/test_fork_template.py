"""The fork template (polyproc/_fork_template.py): under fork, no worker is
forked from a multi-threaded process."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings

import psutil
import pytest

import polyproc
import polyproc.pool
from polyproc import ProcessError

import _fork_template_helpers as fh
import _pool_helpers as h

FORK = polyproc.get_context("fork")


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids, seconds: float) -> bool:
    """True once none of *pids* runs (zombies count as gone), within *seconds*."""
    deadline = time.monotonic() + seconds
    while any(_running(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _kill_and_wait(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # gone already: a worker of maxtasksperchild=1 may retire first
    assert _wait_gone([pid], 5)


@contextlib.contextmanager
def _locks_held_by_another_thread():
    """A thread of this process holds USER_LOCK and logging's lock meanwhile."""
    holding, release = threading.Event(), threading.Event()

    def hold_locks():
        with fh.USER_LOCK, logging._lock:  # type: ignore[attr-defined]
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold_locks, daemon=True)
    holder.start()
    try:
        assert holding.wait(5)
        yield
    finally:
        release.set()
        holder.join(5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("replaced", ["killed", "retired"])
def test_replacement_worker_runs_while_parent_threads_hold_locks(ctx, replaced):
    # Forked from the scheduler thread, a replacement would inherit USER_LOCK
    # held (and the fork itself would wait for logging's lock, which
    # logging's fork hook takes): its task would hang.
    maxtasks = 1 if replaced == "retired" else None
    with ctx.Pool(1, maxtasksperchild=maxtasks) as pool:
        victim = pool.apply(h.pid_of)
        with _locks_held_by_another_thread():
            if replaced == "killed":
                _kill_and_wait(victim)
            # else: the worker retired after its one task; its replacement
            # starts now or has started (either way the template forks it,
            # not this process), and another after each task below.
            outcomes = [pool.apply_async(fh.take_lock_and_log).get(timeout=10)
                        for _ in range(2)]
    pids = {pid for _, _, pid in outcomes}
    assert victim not in pids
    assert len(pids) == (2 if replaced == "retired" else 1)
    assert all(took_lock and logged == 1 for took_lock, logged, _ in outcomes)


@pytest.mark.timeout(60)
def test_replacements_are_forked_by_a_single_threaded_template():
    with FORK.Pool(2, maxtasksperchild=1) as pool:
        # The first workers are forked by this thread in Pool(), as the
        # stdlib's are (before the scheduler thread starts); from here on
        # every worker is a replacement, needed while this process runs the
        # scheduler thread and one more.
        first = {w.pid for w in pool._pool}
        idle = threading.Event()
        extra = threading.Thread(target=idle.wait, args=(30,), daemon=True)
        extra.start()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # One task per chunk, one chunk per worker: eight workers.
                lineages = pool.map(fh.lineage, range(6), chunksize=1)
                _kill_and_wait(pool._pool[0].pid)
                lineages += pool.map(fh.lineage, range(2), chunksize=1)
            assert {ppid for pid, ppid, _ in lineages if pid in first} == {os.getpid()}
            replacements = [(pid, ppid) for pid, ppid, _ in lineages if pid not in first]
            assert len(replacements) >= 6
            parents = {ppid for _, ppid in replacements}
            assert len(parents) == 1 and os.getpid() not in parents
            template = psutil.Process(parents.pop())
            assert template.pid == pool._backend._template.pid
            assert template.ppid() == os.getpid()
            assert template.num_threads() == 1
            # parent_process() in every worker is still the pool's owner.
            assert {owner for _, _, owner in lineages} == {os.getpid()}
            # Python 3.12+ warns when a multi-threaded process forks.
            assert not [w for w in caught if "multi-threaded" in str(w.message)]
        finally:
            idle.set()
            extra.join(5)
        pool.close()
        pool.join()
    assert not any(_running(pid) for pid, _, _ in lineages)
    assert not psutil.pid_exists(template.pid)  # exited, and reaped by the pool


@contextlib.contextmanager
def _another_thread_runs(kind: str):
    """This process runs one more thread meanwhile: the caller's own, or
    the PoolScheduler thread of another pool."""
    if kind == "another pool":
        with FORK.Pool(1) as other:
            assert other.apply(h.square, (2,)) == 4
            yield
        return
    idle = threading.Event()
    thread = threading.Thread(target=idle.wait, args=(30,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        idle.set()
        thread.join(5)


@pytest.mark.timeout(60)
def test_pool_made_while_another_thread_runs_does_not_fork_this_process(monkeypatch):
    # Asked for (POLYPROC_THREADED_FORK=forkserver): Pool() forks nothing
    # from this process while the caller's other thread runs (a deadlock
    # risk, and a DeprecationWarning on Python 3.12+).  (Another pool's
    # thread is paused instead: test_forks_while_only_polyproc_threads_run...)
    monkeypatch.setenv("POLYPROC_THREADED_FORK", "forkserver")
    with _another_thread_runs("a thread of the caller"), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with FORK.Pool(2) as pool, _locks_held_by_another_thread():
            lineages = pool.map(fh.lineage, range(4), chunksize=1)
            _kill_and_wait(pool._pool[0].pid)
            took_lock, logged, _ = pool.apply_async(fh.take_lock_and_log).get(timeout=10)
            lineages += pool.map(fh.lineage, range(4), chunksize=1)
            # A worker has the modules this process had imported (psutil: by
            # this test module only), as a forked one would: the template
            # imported them, not each worker at its first task.
            assert pool.apply(fh.imported, ("psutil",))
            template = psutil.Process(pool._backend._template.pid)
            # Started by the fork server, not forked from this process; the
            # template forks every worker.
            assert template.ppid() != os.getpid()
            assert {ppid for _, ppid, _ in lineages} == {template.pid}
            assert {owner for _, _, owner in lineages} == {os.getpid()}
    assert took_lock and logged == 1
    forks_warned = [w for w in caught if "multi-threaded" in str(w.message)]
    if sys.version_info >= (3, 12):  # the warning exists since 3.12
        assert not forks_warned, [str(w.message) for w in forks_warned]
    assert not _running(template.pid)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("other", ["a thread of the caller", "another pool"])
def test_a_fork_pool_made_while_another_thread_runs_keeps_fork_semantics(other,
                                                                         monkeypatch):
    # By default a fork pool's workers see the caller's memory at Pool(),
    # threads or not, as the stdlib's do: a global the program set at run
    # time is there in every worker, the first ones and the replacements
    # (a pool that switched to the fork server here broke such programs).
    monkeypatch.delenv("POLYPROC_THREADED_FORK", raising=False)
    monkeypatch.setattr(fh, "STATE", "set at run time")
    # Python 3.12+ warns about the caller's own thread, as it does for the
    # stdlib's pool; another pool's thread is paused (fork_pause): no warning.
    warns = other == "a thread of the caller" and sys.version_info >= (3, 12)
    with _another_thread_runs(other), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = FORK.Pool(2)
    forks_warned = [w for w in caught if "multi-threaded" in str(w.message)]
    assert bool(forks_warned) == warns, [str(w.message) for w in forks_warned]
    with pool:
        states = {pool.apply(fh.state)[0] for _ in range(4)}
        _kill_and_wait(pool._pool[0].pid)
        states |= {pool.apply_async(fh.state).get(timeout=10)[0] for _ in range(4)}
    assert states == {"set at run time"}


@contextlib.contextmanager
def _threads_at_each_fork(monkeypatch):
    """``(forks, warned)``: the thread names alive at each os.fork() of this
    process meanwhile, and (filled at the end) the multi-threaded-fork
    warnings they gave (Python 3.12+)."""
    forks: list[list[str]] = []
    warned: list[str] = []
    me, real_fork = os.getpid(), os.fork

    def recording_fork():
        if os.getpid() == me:
            forks.append(sorted(t.name for t in threading.enumerate()))
        return real_fork()

    monkeypatch.setattr(os, "fork", recording_fork)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield forks, warned
    monkeypatch.setattr(os, "fork", real_fork)
    warned += [str(w.message) for w in caught if "multi-threaded" in str(w.message)]


def _start_a_process():
    process = FORK.Process(target=h.square, args=(3,))
    process.start()
    return process


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make", ["Pool", "Executor", "Process"])
def test_forks_while_only_polyproc_threads_run_see_one_thread(make, monkeypatch):
    # Two pools run (two PoolScheduler threads), one with a call in flight:
    # a fork Pool, Executor or Process made now pauses both threads for its
    # forks (fork_pause), so no fork sees another thread, and the two pools
    # go on as if nothing happened.
    got = []
    callback_ran = threading.Event()
    with FORK.Pool(2) as first, FORK.Pool(1) as second:
        in_flight = first.map_async(h.square, range(200), chunksize=1)
        with _threads_at_each_fork(monkeypatch) as (forks, warned):
            if make == "Pool":
                made = FORK.Pool(2)
                assert made.map(h.square, range(4)) == [0, 1, 4, 9]
                made.close()
                made.join()
            elif make == "Executor":
                made = polyproc.Executor(2, mp_context=FORK)
                assert made.submit(h.square, 5).result(timeout=10) == 25
                made.shutdown()
            else:
                made = _start_a_process()
                made.join(10)
                assert made.exitcode == 0
        assert not warned
        assert len(forks) >= (3 if make != "Process" else 1)  # workers, template
        assert all(names == ["MainThread"] for names in forks), forks
        assert in_flight.get(timeout=10) == [i * i for i in range(200)]
        second.apply_async(h.square, (4,), callback=got.append,
                           error_callback=got.append)
        second.apply_async(h.square, (5,), callback=lambda v: callback_ran.set())
        assert callback_ran.wait(10) and got == [16]
        names = sorted(t.name for t in threading.enumerate())
        assert names.count("PoolScheduler") >= 2
    assert "PoolScheduler" not in {t.name for t in threading.enumerate()}


@pytest.mark.timeout(60)
def test_a_program_thread_means_nothing_is_paused(monkeypatch):
    # Pausing the pool's thread while the program's own runs would cost
    # and leave the fork multi-threaded anyway: nothing is paused, and
    # Python 3.12+ warns as it would for the stdlib's pool.
    with FORK.Pool(1) as first, _another_thread_runs("a thread of the caller"):
        with _threads_at_each_fork(monkeypatch) as (forks, warned):
            process = _start_a_process()
        process.join(10)
        assert forks[0].count("PoolScheduler") == 1 and len(forks[0]) == 3
        if sys.version_info >= (3, 12):
            assert warned
        assert first.apply(h.square, (6,)) == 36


@pytest.mark.timeout(60)
def test_a_paused_pool_collected_during_the_fork_does_not_deadlock(monkeypatch):
    # A dropped pool (kept only by a reference cycle) is collected while
    # another Pool() forks with its thread paused: its finalizer terminates
    # it from the forking thread, which must not wait for the thread it
    # paused itself.  The pool ends once resumed.
    import gc
    dropped = FORK.Pool(1)
    assert dropped.apply(h.square, (2,)) == 4
    worker = dropped._pool[0].pid
    dropped.cycle = dropped
    del dropped
    real_fork = os.fork
    collected = []

    def collecting_fork():
        if not collected:
            collected.append(gc.collect())
        return real_fork()

    monkeypatch.setattr(os, "fork", collecting_fork)
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # "unclosed pool": on purpose
        pool = FORK.Pool(1)
    # A deadlock would wait for ever (ended only by the test's timeout,
    # whose exception the finalizer swallows): bound it well below that.
    assert time.monotonic() - started < 10
    monkeypatch.setattr(os, "fork", real_fork)
    with pool:
        assert collected and pool.apply(h.square, (3,)) == 9
        assert _wait_gone([worker], 10)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("when", ["during the fork", "while resuming"])
def test_ctrl_c_while_pools_are_paused_leaves_them_running(when, monkeypatch):
    # Ctrl-C lands while Pool() has paused two other pools: Pool() raises
    # KeyboardInterrupt, and both pools run on (a pool left paused would
    # never deliver another result).
    from polyproc._pool._backends.process.scheduler import ProcessScheduler
    sent = []

    def interrupt_once():
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    with FORK.Pool(1) as first, FORK.Pool(1) as second:
        assert first.apply(h.square, (1,)) == second.apply(h.square, (1,)) == 1
        if when == "during the fork":
            real_fork = os.fork
            monkeypatch.setattr(os, "fork", lambda: interrupt_once() or real_fork())
        else:
            real_resume = ProcessScheduler.resume
            monkeypatch.setattr(ProcessScheduler, "resume",
                                lambda self: interrupt_once() or real_resume(self))
        with pytest.raises(KeyboardInterrupt):
            FORK.Pool(1)
        monkeypatch.undo()
        assert sent
        assert first.apply_async(h.square, (3,)).get(timeout=10) == 9
        assert second.apply_async(h.square, (4,)).get(timeout=10) == 16


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["Pool", "ThreadPool"])
def test_a_joined_pool_leaves_no_system_thread(kind):
    # On Python 3.12 Thread.join() returns before the system thread has
    # exited; a fork right after (the program's next Pool()) counted it and
    # warned.  join() returns once the system threads are gone.
    for round_ in range(60):
        if kind == "Pool":
            pool = FORK.Pool(1)
            threads = [pool._backend._thread]
        else:
            pool = polyproc.pool.ThreadPool(2)
            threads = list(pool._backend._threads)
        assert pool.apply(h.square, (round_,)) == round_ * round_
        if round_ % 2:
            pool.close()
        else:
            pool.terminate()
        pool.join()
        left = [t.native_id for t in threads
                if os.path.exists(f"/proc/self/task/{t.native_id}")]
        assert not left, f"round {round_}: system threads still there: {left}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("end", ["close", "terminate"])
def test_join_waits_for_a_paused_scheduler(end):
    # A pool's thread paused for another fork has not ended: join() (and
    # terminate(), which joins) wait for it to be resumed and to end.
    pool = FORK.Pool(1)
    scheduler = pool._backend
    assert pool.apply(h.square, (2,)) == 4
    scheduler.request_pause()
    assert scheduler.wait_paused(10)
    result = pool.apply_async(h.square, (3,))  # accepted while paused
    returned = threading.Event()

    def end_the_pool():
        if end == "close":
            pool.close()
        else:
            pool.terminate()
        pool.join()
        returned.set()

    ender = threading.Thread(target=end_the_pool, daemon=True)
    ender.start()
    assert not returned.wait(0.3)  # still paused: nothing may have ended
    scheduler.resume()
    assert returned.wait(10)
    ender.join(5)
    if end == "close":
        assert result.get(timeout=1) == 9
    assert not scheduler.running_thread()


def test_threaded_fork_accepts_only_fork_or_forkserver(monkeypatch):
    monkeypatch.setenv("POLYPROC_THREADED_FORK", "spawn")
    with _another_thread_runs("a thread of the caller"), \
            pytest.raises(ValueError, match="POLYPROC_THREADED_FORK must be 'fork' or "
                                            "'forkserver', not 'spawn'"):
        FORK.Pool(1)


@pytest.mark.timeout(60)
def test_replacements_see_the_state_of_pool_creation(monkeypatch):
    # A replacement sees the memory of Pool() time, as the first workers do.
    with FORK.Pool(1) as pool:
        monkeypatch.setattr(fh, "STATE", "changed after Pool()")
        first_state, first_pid = pool.apply(fh.state)
        _kill_and_wait(first_pid)
        state, pid = pool.apply_async(fh.state).get(timeout=10)
    assert pid != first_pid
    assert first_state == state == "at Pool()"


@pytest.mark.timeout(60)
def test_killed_template_breaks_the_pool_with_a_clear_error():
    with FORK.Pool(1) as pool:
        (worker,) = [w.pid for w in pool._pool]
        assert pool.apply(h.pid_of) == worker
        template = pool._backend._template.pid
        os.kill(template, signal.SIGKILL)
        assert _wait_gone([template], 5)
        # The first worker is this process's child and goes on; once it
        # dies no worker can be forked any more, and the pool breaks
        # instead of waiting for one.
        _kill_and_wait(worker)
        with pytest.raises(ProcessError, match=r"template process .* is gone: it was "
                                               "killed by SIGKILL"):
            pool.apply_async(h.square, (3,)).get(timeout=10)
        with pytest.raises(ProcessError, match="template process"):
            pool.apply_async(h.square, (3,)).get(timeout=10)
    assert not psutil.pid_exists(template)  # reaped by the pool


@pytest.mark.timeout(60)
def test_worker_exit_codes_come_from_the_template():
    # The workers are not our children: their exit status is the template's
    # to read, and it must still name the signal (describe_exit).
    with FORK.Pool(2) as pool:
        assert pool.map(h.square, range(4)) == [0, 1, 4, 9]  # workers up
        victim = pool._pool[0]
        assert victim.exitcode is None and victim.is_alive()
        victim.terminate()
        # The scheduler thread joins its dead workers too: whichever thread
        # reaps the process first, the exit code appears on the shared
        # object, maybe a moment after the sentinel fired here.
        deadline = time.monotonic() + 5
        while victim.exitcode is None and time.monotonic() < deadline:
            victim.join(0.05)
        assert victim.exitcode == -signal.SIGTERM and not victim.is_alive()
        victim.kill()  # exited already: a no-op, never another process
        assert pool.map(h.square, range(4)) == [0, 1, 4, 9]


@pytest.mark.timeout(60)
def test_progress_bar_leaves_no_thread_behind(capfd):
    # tqdm's monitor thread outlived the call by up to 10 s: the next Pool()
    # then forked a multi-threaded process (a warning on Python 3.12+).
    before = {t.ident for t in threading.enumerate()}
    with FORK.Pool(2) as pool:
        assert pool.map(h.square, range(20), progress=True) == [x * x for x in range(20)]
        pool.close()
        pool.join()
    assert "20/20" in capfd.readouterr().err
    assert {t.ident for t in threading.enumerate()} <= before


def _pool_while_a_thread_runs() -> list[int]:
    """In a forked child: a fork pool made while another thread runs."""
    idle = threading.Event()
    thread = threading.Thread(target=idle.wait, args=(30,), daemon=True)
    thread.start()
    try:
        with FORK.Pool(2) as pool:
            return pool.map(h.square, range(4))
    finally:
        idle.set()
        thread.join(5)


@pytest.mark.timeout(60)
def test_forked_child_of_a_fork_server_user_gets_its_own_fork_server():
    # The child inherits this process's record of its fork server, which
    # the stdlib's ensure_running() then waits for: ChildProcessError (a
    # manager's server process making a Pool hit it).
    with polyproc.get_context("forkserver").Pool(1) as pool:
        assert pool.apply(h.square, (3,)) == 9  # the fork server runs
    assert h.report_of_fork_child(_pool_while_a_thread_runs) == [0, 1, 4, 9]


class _ResultsFrom(polyproc.Instrument):
    """The pids of the workers whose results messages arrived."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.changed = threading.Condition()

    def results_received(self, info) -> None:
        with self.changed:
            self.pids.add(info.pid)
            self.changed.notify_all()

    def wait_for(self, pid: int, seconds: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: pid in self.pids, seconds)


@pytest.mark.timeout(60)
def test_results_of_a_worker_still_running_when_the_template_broke_the_pool_are_dropped():
    # The template is gone, one worker dies: the pool breaks and fails the
    # chunks every worker held.  The other worker, still running one, then
    # sends its results: the scheduler must drop them, not crash (it did:
    # IndexError, and every later call failed "scheduler crashed").
    watch = _ResultsFrom()
    with FORK.Pool(2, instruments=[watch]) as pool:
        assert pool.map(h.square, range(4)) == [0, 1, 4, 9]  # both workers up
        watch.pids.clear()  # no event comes meanwhile: no task runs
        template = pool._backend._template.pid
        os.kill(template, signal.SIGKILL)
        assert _wait_gone([template], 5)
        running = pool.apply_async(h.slow_pid, (0.5,))   # an idle worker takes it
        dying = pool.apply_async(h.kill_self, (0,))      # the other one
        with pytest.raises(ProcessError, match="template process"):
            running.get(timeout=10)
        with pytest.raises(ProcessError):
            dying.get(timeout=10)
        survivors = [w.pid for w in pool._pool if w.is_alive()]
        assert len(survivors) == 1
        assert watch.wait_for(survivors[0], 10)
        with pytest.raises(ProcessError, match="template process"):
            pool.apply_async(h.square, (3,)).get(timeout=10)
