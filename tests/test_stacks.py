"""Stacks of a stuck pool: ``Pool.stacks()``, ``Executor.stacks()``, ``hang_report=``.

Real workers blocked in C (a sleep, a lock, a pipe read), real signals,
real SIGKILLs; the hang report is read from the stderr of a program run as
a user runs it.  The mechanism is ``_pool/_backends/process/stacks.py``.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import polyproc
import polyproc.pool
from polyproc._pool._backends.process import stacks as _stacks

import _stacks_helpers as helpers

SCRIPTS = Path(__file__).parent / "scripts"
SIGNAL = _stacks.configured_signal()
HELPERS_FILE = helpers.__file__

BLOCKERS = {"sleep": helpers.blocked_in_sleep, "lock": helpers.blocked_in_lock,
            "read": helpers.blocked_in_read}


def _frame_line(kind: str, func) -> str:
    """What faulthandler writes for the blocking line of *func*."""
    return f'File "{HELPERS_FILE}", line {helpers.blocking_line(kind)} in {func.__name__}'


def _start_blocked(pool, func, tmp_path: Path, name: str, *args):
    started = str(tmp_path / f"{name}.started")
    result = pool.apply_async(func, (*args, started))
    helpers.wait_for_file(started)
    return result


def _wait_until_blocked(pool, kind: str, func) -> None:
    """Return once a worker of *pool* dumps a stack blocked on *func*'s
    ``# BLOCKS: kind`` line.

    The task creates its *started* file just before that line: a request
    sent as soon as the file exists can find the worker still on its way
    there (in ``_started``), its dump then showing the line before.
    """
    line = _frame_line(kind, func)
    deadline = time.monotonic() + 10
    while True:
        texts = pool.stacks()
        if any(line in text for text in texts.values()):
            return
        assert time.monotonic() < deadline, texts
        time.sleep(0.01)


def _wait_until_serving(pool) -> dict[int, str]:
    """The stacks of *pool*'s workers once every one of them waits in serve().

    The scheduler counts a worker ready when its WorkerReady message
    arrives; the worker may then still be on its way out of the send that
    carried it, so readiness alone does not put it in serve() yet.
    """
    deadline = time.monotonic() + 30
    while True:
        texts = pool.stacks()
        if texts and all(" in serve\n" in t for t in texts.values()):
            return texts
        assert time.monotonic() < deadline, texts
        time.sleep(0.01)


def _worker_running(texts: dict[int, str], func_name: str) -> str:
    found = [text for text in texts.values() if f"running {func_name}(" in text]
    assert len(found) == 1, texts
    return found[0]


def test_stacks_show_tasks_blocked_in_c(ctx, tmp_path):
    with ctx.Pool(3) as pool:
        for kind, func in BLOCKERS.items():
            _start_blocked(pool, func, tmp_path, kind)
        for kind, func in BLOCKERS.items():
            _wait_until_blocked(pool, kind, func)
        began = time.monotonic()
        texts = pool.stacks()
        took = time.monotonic() - began
        pids = {p.pid for p in pool._pool}
    assert took < 1.0
    assert set(texts) == pids
    for kind, func in BLOCKERS.items():
        text = _worker_running(texts, func.__name__)
        # The task it holds, from the scheduler's books, then the stack
        # with the very line the task is blocked on.
        first = text.splitlines()[0]   # (a long argument is shortened)
        assert first.startswith(f"running {func.__name__}('/"), text
        assert "[task 0], its chunk started " in first, text
        assert _frame_line(kind, func) in text, text
        assert "Current thread" in text
        assert "no stack" not in text


def test_stacks_name_the_tasks_each_worker_holds(tmp_path):
    ctx = polyproc.get_context("fork")
    with ctx.Pool(1) as pool:
        # Once its tasks are known to be quick, a worker is sent several
        # chunks at a time: it holds the others while the first one blocks.
        pool.map(helpers.sleep_if, [None] * 100, chunksize=1)
        started = str(tmp_path / "started")
        pool.map_async(helpers.sleep_if, [started] + [None] * 7, chunksize=1)
        helpers.wait_for_file(started)
        [worker] = pool._backend._workers.values()
        deadline = time.monotonic() + 10
        while len(worker.assigned) < 2:  # the scheduler sends more as it wakes
            assert time.monotonic() < deadline, "no chunk was sent behind the first"
            time.sleep(0.001)
        [text] = pool.stacks().values()
    lines = text.splitlines()
    assert lines[0].startswith("running sleep_if('/") and "[task 0]" in lines[0], text
    assert lines[1] == "holds sleep_if task 1 (not started)", text
    assert _frame_line("sleep_if", helpers.sleep_if) in text


def test_executor_stacks(tmp_path):
    ctx = polyproc.get_context("forkserver")
    with polyproc.Executor(1, mp_context=ctx) as executor:
        started = str(tmp_path / "started")
        future = executor.submit(helpers.blocked_in_read, started)
        helpers.wait_for_file(started)
        began = time.monotonic()
        texts = executor.stacks()
        assert time.monotonic() - began < 1.0
        executor.kill_workers()
    [text] = texts.values()
    assert text.startswith("running blocked_in_read('/") and "[task 0]" in text
    assert _frame_line("read", helpers.blocked_in_read) in text
    assert future.exception() is not None


def test_thread_pool_stacks(tmp_path):
    event = threading.Event()
    with polyproc.pool.ThreadPool(2) as pool:
        result = pool.apply_async(helpers.waits_for, (event,))
        deadline = time.monotonic() + 10
        while not any("running waits_for" in t for t in pool.stacks().values()):
            assert time.monotonic() < deadline, "the task did not start"
            time.sleep(0.005)
        texts = pool.stacks()
        native_ids = {t.native_id for t in threading.enumerate()}
        event.set()
        result.get(10)
    assert len(texts) == 2 and set(texts) <= native_ids
    [text] = [t for t in texts.values() if "running waits_for" in t]
    assert text.startswith("running waits_for task 0\n")
    assert (f'File "{HELPERS_FILE}", line {helpers.blocking_line("event")}, '
            f"in waits_for") in text
    assert sum("holds no task" in t for t in texts.values()) == 1


def test_stacks_show_a_hung_initializer(tmp_path):
    started = str(tmp_path / "started")
    with polyproc.get_context("forkserver").Pool(
            1, initializer=helpers.blocked_in_lock, initargs=(started,)) as pool:
        helpers.wait_for_file(started)
        deadline = time.monotonic() + 10
        while "the worker is starting" in (text := next(iter(pool.stacks().values()))):
            # WorkerReady never comes; StacksReady was sent just before the
            # file was made, and is read by the scheduler at once.
            assert time.monotonic() < deadline, text
            time.sleep(0.005)
    assert text.startswith("holds no task\n")
    assert _frame_line("lock", helpers.blocked_in_lock) in text


def test_stacks_of_a_pool_that_is_gone_are_empty():
    pool = polyproc.get_context("fork").Pool(1)
    pool.terminate()
    pool.join()
    assert pool.stacks() == {}


# The executor shares the pool's scheduler: one start method is enough.
@pytest.mark.parametrize("method, front", [("fork", "pool"), ("forkserver", "pool"),
                                           ("spawn", "pool"), ("spawn", "executor")])
def test_hang_report_once_per_stall(method, front):
    proc = subprocess.run([sys.executable, str(SCRIPTS / "hang_report.py"), method, front],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    # Two stalls of 0.8 s with hang_report=0.2: one report each, although
    # each lasted four times the threshold.
    reports = proc.stderr.split("polyproc: no task of the pool has finished for ")
    assert reports[0] == "", proc.stderr
    assert len(reports) == 3, proc.stderr
    script = (SCRIPTS / "hang_report.py").read_text().splitlines()
    line = next(n for n, text in enumerate(script, 1) if text.endswith("# STALLS HERE"))
    for report in reports[1:]:
        assert "(1 outstanding, 0 of them queued)" in report
        assert "--- worker " in report
        assert "running stall_for(0.8) [task 0]" in report
        assert f'hang_report.py", line {line} in stall_for' in report


def _screen(output: str) -> list[str]:
    """What a terminal shows of *output*: its lines once carriage returns,
    line feeds (as a tty's ``onlcr`` makes them) and tqdm's cursor-up moves
    (ESC [ A) are applied."""
    lines, row, col, i = [""], 0, 0, 0
    while i < len(output):
        if output.startswith("\x1b[A", i):
            row, i = max(0, row - 1), i + 3
            continue
        char, i = output[i], i + 1
        if char == "\r":
            col = 0
        elif char == "\n":
            row, col = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + char + line[col + 1:]
            col += 1
    return [line.rstrip() for line in lines]


def test_a_hang_report_is_not_drawn_over_by_progress_bars():
    # The bars are cleared while the report is written, then drawn again
    # below it: the report starts on a line of its own, and no bar is
    # left among its lines.
    proc = subprocess.run([sys.executable, str(SCRIPTS / "hang_report_bars.py"), "fork"],
                          capture_output=True, timeout=60)  # bytes: keep the \r
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    assert proc.stdout == b"[0, 1, 2, 3]\n"
    screen = _screen(stderr)
    headers = [n for n, line in enumerate(screen) if "polyproc: no task of the pool" in line]
    bars = [n for n, line in enumerate(screen) if "%|" in line]
    assert headers and bars, stderr
    reports = []  # (first row, last row) of each report (one, unless the machine is slow)
    for header, after in zip(headers, headers[1:] + [len(screen)]):
        assert screen[header].startswith("polyproc: no task of the pool"), screen[header]
        end = max(n for n in range(header, after) if screen[n].startswith("  File "))
        assert not [n for n in bars if header < n <= end], "\n".join(screen)
        reports.append("\n".join(screen[header:end + 1]))
    assert any("running loop(1) [task 1]" in report for report in reports)
    assert bars[-1] > end  # drawn again below the last report


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_nothing_remains_after_the_pool(ctx, tmp_path):
    enabled = faulthandler.is_enabled()
    with ctx.Pool(2) as warm_up:  # the fork server, the tracker: started for good
        warm_up.stacks()
    before = _fds()
    pool = ctx.Pool(2)
    for name in ("one", "two"):  # one on each worker: both are ready
        _start_blocked(pool, helpers.blocked_in_sleep, tmp_path, name)
    worker_pids = [p.pid for p in pool._pool]
    for _ in range(3):
        assert len(pool.stacks()) == 2
    # Each worker registered its handler (the positive control of the
    # checks below), and writes to an in-memory file, never one on disk.
    assert all(helpers.caught(SIGNAL, pid) for pid in worker_pids)
    assert not helpers.caught(SIGNAL)
    pool.terminate()
    pool.join()
    assert _fds() == before
    assert faulthandler.is_enabled() == enabled
    assert not helpers.caught(SIGNAL)  # nothing registered in this process, ever
    assert not faulthandler.unregister(SIGNAL)
    for pid in worker_pids:
        assert not os.path.exists(f"/proc/{pid}")


def test_a_process_forked_by_a_task_inherits_no_handler_and_no_file():
    with polyproc.get_context("fork").Pool(1) as pool:
        report = pool.apply(helpers.fork_and_report, (SIGNAL,))
    assert report["worker"] is True
    assert report["child"] is False
    assert report["child_has_file"] is False
    assert report["file"].startswith("/memfd:polyproc-stacks")


def test_a_worker_leaving_its_pool_unregisters(ctx, tmp_path):
    report = tmp_path / "at-exit"
    with ctx.Pool(1, initializer=helpers.report_at_exit,
                  initargs=(SIGNAL, str(report))) as pool:
        [pid] = [p.pid for p in pool._pool]
        assert pool.apply(helpers.caught, (SIGNAL,)) is True  # while in the pool
        pool.close()
        pool.join()
    # Read at the worker's exit, after worker_main returned: not caught any
    # more (ignored: a late request must not kill it), no file held.
    assert report.read_text() == "010", pid


def test_uninstall_leaves_nothing_registered():
    with polyproc.get_context("spawn").Pool(1) as pool:
        report = pool.apply(helpers.install_then_uninstall, (SIGNAL,))
    assert report == {"during": True, "after": False, "fd_open": False,
                      "still_registered": False}


def test_a_worker_that_does_not_answer_costs_the_timeout(tmp_path):
    with polyproc.get_context("fork").Pool(1) as pool:
        _start_blocked(pool, helpers.deaf_to, tmp_path, "deaf", SIGNAL)
        began = time.monotonic()
        [text] = pool.stacks(timeout=0.3).values()
        took = time.monotonic() - began
    assert 0.3 <= took < 1.0
    assert "running deaf_to(" in text
    assert "did not answer signal" in text


def test_a_worker_killed_between_the_signal_and_the_read(ctx, tmp_path):
    with ctx.Pool(1) as pool:
        result = _start_blocked(pool, helpers.deaf_to, tmp_path, "deaf", SIGNAL)
        [pid] = [p.pid for p in pool._pool]
        answers: list = []
        asking = threading.Thread(target=lambda: answers.append(pool.stacks(timeout=30)))
        asking.start()
        # The request is sent once the signal waits for the worker (it
        # blocks it); then the worker dies before it could answer.
        deadline = time.monotonic() + 10
        while not helpers.pending(SIGNAL, pid):
            assert time.monotonic() < deadline, "the request never reached the worker"
            time.sleep(0.001)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        asking.join(5)
        assert not asking.is_alive(), "stacks() waited on a dead worker"
        assert time.monotonic() - killed < 2.0
        with pytest.raises(polyproc.WorkerLostError):
            result.get(10)
        # Its replacement (under fork, a child of the fork template, not of
        # this process) answers.
        replacement = _wait_until_serving(pool)
    [texts] = answers
    [(new_pid, text)] = replacement.items()
    assert new_pid != pid
    assert text.startswith("holds no task\n")
    assert " in serve\n" in text and " in worker_main\n" in text
    assert f"no stack: worker {pid} died" in texts[pid] or \
        f"no stack: worker {pid} is gone" in texts[pid]


def test_a_file_a_task_put_at_the_stack_files_number_is_left_alone(ctx, tmp_path):
    # A worker's stack file is reached through its fd number: once a task
    # puts a file of its own there, the request must neither empty nor
    # dump into it (a pid reused by another process: the same).
    path, release = tmp_path / "own.txt", tmp_path / "release"
    with ctx.Pool(1) as pool:
        started = str(tmp_path / "started")
        result = pool.apply_async(helpers.write_over_stack_file,
                                  (str(path), started, str(release)))
        helpers.wait_for_file(started)
        [(pid, text)] = pool.stacks(timeout=0.5).items()
        release.touch()
        assert result.get(10) == "the task's own data\n"
    assert f"no stack: worker {pid}'s fd" in text and "not its stack file" in text


@pytest.mark.parametrize("action", [signal.SIG_DFL, signal.SIG_IGN],
                         ids=["default", "ignored"])
def test_a_worker_whose_task_reset_the_signal_is_not_sent_it(ctx, action):
    # By default a real-time signal terminates its process: a request must
    # not kill a worker whose task took the handler away, nor wait for
    # one that ignores it.
    with ctx.Pool(1) as pool:
        pid = pool.apply(helpers.reset_signal, (SIGNAL, action))
        began = time.monotonic()
        texts = pool.stacks(timeout=5)
        took = time.monotonic() - began
        assert pool.apply(os.getpid) == pid  # alive, still the pool's worker
    assert took < 2.5
    assert f"no stack: worker {pid} does not catch signal" in texts[pid]


def test_a_hang_report_does_not_wait_for_a_callers_long_stacks_call(tmp_path, capfd):
    # The PoolScheduler thread writes the report, and delivers results: a
    # caller's stacks(timeout=30) waiting on a worker that does not answer
    # must not hold it for 30 s.
    release = tmp_path / "release"
    with polyproc.get_context("fork").Pool(2, hang_report=0.2) as pool:
        pids = [p.pid for p in pool._pool]
        _start_blocked(pool, helpers.deaf_to, tmp_path, "deaf", SIGNAL)
        other = _start_blocked(pool, helpers.blocked_until, tmp_path, "other", str(release))
        [deaf_pid] = [pid for pid in pids if helpers.blocks(SIGNAL, pid)]
        asking = threading.Thread(target=pool.stacks, kwargs={"timeout": 30})
        asking.start()
        deadline = time.monotonic() + 10
        while not helpers.pending(SIGNAL, deaf_pid):
            assert time.monotonic() < deadline, "the caller's request never started"
            time.sleep(0.001)
        release.touch()
        other.get(10)  # a task finished: the next stall begins, the caller still waits
        capfd.readouterr()
        report, deadline = "", time.monotonic() + 10
        while "polyproc: no task of the pool has finished" not in report:
            assert time.monotonic() < deadline, "no hang report while a caller waited"
            time.sleep(0.01)
            report += capfd.readouterr().err
        assert pool.apply(os.getpid, timeout=5) in pids  # the scheduler runs on
        assert asking.is_alive()
        os.kill(deaf_pid, signal.SIGKILL)  # ends the caller's wait
        asking.join(10)
    assert "running deaf_to(" in report
    assert "no stack: another stacks() call is asking the workers" in report


def test_requests_to_a_worker_that_blocks_the_signal_do_not_pile_up(tmp_path):
    # Real-time signals queue (against a per-user limit): a request while
    # the last one still waits adds none, so the worker dumps once when it
    # unblocks the signal, not once per request.
    release = tmp_path / "release"
    with polyproc.get_context("fork").Pool(1) as pool:
        result = _start_blocked(pool, helpers.deaf_then_count_dumps, tmp_path, "deaf",
                                SIGNAL, str(release))
        for _ in range(10):
            [text] = pool.stacks(timeout=0.01).values()
            assert "did not answer signal" in text
        release.touch()
        assert result.get(10) == 1


def test_the_signal_can_be_chosen(monkeypatch, tmp_path):
    monkeypatch.setenv(_stacks.ENV_SIGNAL, "SIGUSR2")
    assert _stacks.configured_signal() == signal.SIGUSR2
    with polyproc.get_context("spawn").Pool(1) as pool:
        _start_blocked(pool, helpers.blocked_in_sleep, tmp_path, "sleep")
        _wait_until_blocked(pool, "sleep", helpers.blocked_in_sleep)
        [(pid, text)] = pool.stacks().items()
        assert helpers.caught(signal.SIGUSR2, pid)
        assert not helpers.caught(SIGNAL, pid)
    assert _frame_line("sleep", helpers.blocked_in_sleep) in text


def test_stacks_can_be_turned_off(monkeypatch, tmp_path):
    monkeypatch.setenv(_stacks.ENV_SIGNAL, "0")
    with polyproc.get_context("fork").Pool(1) as pool:
        _start_blocked(pool, helpers.blocked_in_sleep, tmp_path, "sleep")
        [(pid, text)] = pool.stacks().items()
        assert not helpers.caught(SIGNAL, pid)
    assert text.startswith("running blocked_in_sleep(")
    assert f"no stack: stacks are turned off ({_stacks.ENV_SIGNAL}=0)" in text


@pytest.mark.parametrize("value, expected", [
    ("SIGUSR1", signal.SIGUSR1), ("sigrtmin+3", signal.SIGRTMIN + 3),
    ("SIGRTMAX-2", signal.SIGRTMAX - 2), ("40", 40), ("0", 0)])
def test_signal_names(monkeypatch, value, expected):
    monkeypatch.setenv(_stacks.ENV_SIGNAL, value)
    assert _stacks.configured_signal() == expected


@pytest.mark.parametrize("value", ["SIGNOPE", "SIGKILL", "999", "SIGRTMIN+x"])
def test_a_bad_signal_is_refused_with_the_variable_named(monkeypatch, value):
    monkeypatch.setenv(_stacks.ENV_SIGNAL, value)
    with pytest.raises(ValueError, match=_stacks.ENV_SIGNAL):
        polyproc.Pool(1)


@pytest.mark.parametrize("value, error", [(0, ValueError), (-1.0, ValueError),
                                          ("5", TypeError), (True, TypeError)])
def test_hang_report_is_checked(value, error):
    with pytest.raises(error, match="hang_report"):
        polyproc.Pool(1, hang_report=value)
    with pytest.raises(error, match="hang_report"):
        polyproc.Executor(1, hang_report=value)


def test_a_reused_pid_s_file_is_never_written(tmp_path):
    # A worker that exited leaves its pid and fd number in the scheduler's
    # books; another process may get that pid and hold any file at that fd
    # (a program loading a shared library does, for a moment).  The request
    # must not empty that file: this once truncated a system library.
    victim = tmp_path / "precious.bin"
    victim.write_bytes(b"do not truncate me" * 100)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         ("import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); print(fd, flush=True);"
          " sys.stdin.read()"), str(victim)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        fd = int(holder.stdout.readline())
        texts = _stacks.collect([_stacks.StackRequest(holder.pid, fd)],
                                signal.SIGRTMAX - 6, timeout=0.5)
        assert victim.read_bytes() == b"do not truncate me" * 100
        assert texts[holder.pid].startswith("no stack:")
        assert holder.poll() is None  # and it was not signalled either
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
