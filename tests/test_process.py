"""polyproc.process: stdlib Process semantics on every start method, and
polyproc's additions (p.exception, the stdin guard, daemons that never
outlive their parent, the __main__ guard).
"""
from __future__ import annotations

import multiprocessing
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import polyproc
from polyproc import RemoteError, RemoteTraceback, StdinUnavailableError

import _process_helpers as helpers

SCRIPTS = Path(__file__).parent / "scripts"
JOIN_S = 30  # a bound on every join; a healthy child takes far less


def _started(ctx, target, *args, **kwargs):
    p = ctx.Process(target=target, args=args, **kwargs)
    p.start()
    return p


def _joined(ctx, target, *args, **kwargs):
    p = _started(ctx, target, *args, **kwargs)
    p.join(JOIN_S)
    assert p.exitcode is not None, "child did not finish in time"
    return p


def _recv(conn, timeout=JOIN_S):
    assert conn.poll(timeout), "child sent nothing in time"
    return conn.recv()


# --- stdlib semantics, one body per start method ---------------------------

def test_life_cycle_attributes(ctx):
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    p = ctx.Process(target=helpers.report_identity, args=(child_conn,),
                    name="worker-7", daemon=True)
    assert isinstance(p, multiprocessing.process.BaseProcess)
    assert (p.pid, p.ident, p.exitcode, p.exception) == (None, None, None, None)
    assert not p.is_alive()
    with pytest.raises(ValueError):
        p.sentinel
    assert p.name == "worker-7" and p.daemon is True
    assert p.authkey == polyproc.current_process().authkey
    p.start()
    child_conn.close()
    seen = _recv(parent_conn)
    p.join(JOIN_S)
    assert p.exitcode == 0 and p.exception is None
    assert seen["name"] == "worker-7" and seen["daemon"] is True
    assert seen["pid"] == seen["ident"] == p.pid == p.ident
    assert seen["authkey"] == bytes(p.authkey)
    assert seen["parent_pid"] == os.getpid() and seen["parent_alive"] is True
    assert seen["children"] == 0
    assert isinstance(p.sentinel, int)
    assert not p.is_alive()
    assert "stopped" in repr(p) and "exitcode=0" in repr(p)
    p.close()
    with pytest.raises(ValueError):
        p.pid


def test_default_name_and_class(ctx):
    p = ctx.Process(target=helpers.noop)
    std = multiprocessing.get_context(ctx.get_start_method()).Process(target=helpers.noop)
    assert type(p).__name__ == type(std).__name__
    assert p.name.startswith(type(p).__name__ + "-")


def test_active_children_and_is_alive(ctx):
    started = ctx.Event()
    p = _started(ctx, helpers.wait_forever, started)
    try:
        assert started.wait(JOIN_S)
        assert p.is_alive()
        assert p in polyproc.active_children()
        p.join(0.01)  # a timed-out join returns, the child still runs
        assert p.exitcode is None and p.exception is None
    finally:
        p.kill()
        p.join(JOIN_S)
    assert p not in polyproc.active_children()
    assert p.exitcode == -signal.SIGKILL


@pytest.mark.parametrize("target,args,code", [
    (helpers.noop, (), 0),
    (helpers.raise_value_error, ("boom",), 1),
    (helpers.exit_with, (3,), 3),
    (helpers.exit_with, (None,), 0),
    (helpers.exit_with, ("a message",), 1),
])
def test_exit_codes(ctx, target, args, code):
    assert _joined(ctx, target, *args).exitcode == code


@pytest.mark.parametrize("how,signum", [("terminate", signal.SIGTERM),
                                        ("kill", signal.SIGKILL),
                                        ("os.kill", signal.SIGKILL)])
def test_exit_code_is_minus_the_signal(ctx, how, signum):
    started = ctx.Event()
    p = _started(ctx, helpers.wait_forever, started)
    assert started.wait(JOIN_S)
    if how == "os.kill":
        os.kill(p.pid, signum)
    else:
        getattr(p, how)()
    p.join(JOIN_S)
    assert p.exitcode == -signum
    assert p.exception is None  # killed: it could not say anything


@pytest.mark.parametrize("target,args,code", [
    (helpers.segfault, (), -signal.SIGSEGV),
    (helpers.hard_exit, (7,), 7),
])
def test_exit_code_of_a_crash_and_os_exit(ctx_fs, target, args, code):
    p = _joined(ctx_fs, target, *args)
    assert p.exitcode == code
    assert p.exception is None  # nothing was raised in Python


def test_unpicklable_target_fails_at_start_under_spawn():
    ctx = polyproc.get_context("spawn")
    p = ctx.Process(target=lambda: None)
    std = multiprocessing.get_context("spawn").Process(target=lambda: None)
    with pytest.raises(Exception) as ours:
        p.start()
    with pytest.raises(Exception) as theirs:
        std.start()
    assert type(ours.value) is type(theirs.value)  # the stdlib's error, unchanged
    assert "lambda" in str(ours.value)
    assert p.pid is None and p.exitcode is None and p.exception is None


def _misuse_errors(make):
    """The exception type each misuse raises, for one Process factory."""
    out = {}
    p = make()
    for name, call in [("join before start", lambda: p.join(0)),
                       ("terminate before start", p.terminate)]:
        try:
            call()
            out[name] = None
        except Exception as error:
            out[name] = type(error)
    p.start()
    for name, call in [("start twice", p.start),
                       ("close while running", p.close),
                       ("set daemon after start", lambda: setattr(p, "daemon", True))]:
        try:
            call()
            out[name] = None
        except Exception as error:
            out[name] = type(error)
    p.kill()
    p.join(JOIN_S)
    p.close()
    for name, call in [("start after close", p.start),
                       ("is_alive after close", p.is_alive)]:
        try:
            call()
            out[name] = None
        except Exception as error:
            out[name] = type(error)
    return out


def test_misuse_raises_what_the_stdlib_raises(ctx):
    method = ctx.get_start_method()
    std_ctx = multiprocessing.get_context(method)
    ours = _misuse_errors(lambda: ctx.Process(target=helpers.wait_forever,
                                              args=(ctx.Event(),)))
    theirs = _misuse_errors(lambda: std_ctx.Process(target=helpers.wait_forever,
                                                    args=(std_ctx.Event(),)))
    assert ours == theirs
    assert ours["start twice"] is AssertionError
    assert ours["join before start"] is AssertionError
    assert ours["close while running"] is ValueError


def test_subclass_overriding_run(ctx):
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    p = helpers.make_subclass(ctx, child_conn, fail=True)
    p.start()
    child_conn.close()
    assert _recv(parent_conn) == f"run in {p.name}"
    p.join(JOIN_S)
    assert p.exitcode == 1
    assert type(p.exception) is LookupError
    assert "subclass run failed" in str(p.exception)
    assert "in run" in p.exception.__cause__.tb  # the child's frame


def test_subclass_of_the_default_process():
    parent_conn, child_conn = polyproc.Pipe(duplex=False)
    p = helpers.SubclassProcess(child_conn)
    p.start()
    child_conn.close()
    assert _recv(parent_conn) == f"run in {p.name}"
    p.join(JOIN_S)
    assert (p.exitcode, p.exception) == (0, None)


# --- p.exception -------------------------------------------------------------

def test_exception_is_the_original_with_the_child_traceback(ctx):
    p = _joined(ctx, helpers.raise_value_error, "bad input 42")
    assert p.exitcode == 1
    exc = p.exception
    assert type(exc) is ValueError and exc.args == ("bad input 42",)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "raise_value_error" in exc.__cause__.tb
    assert "ValueError: bad input 42" in exc.__cause__.tb
    assert p.exception is exc  # read once, cached
    p.close()
    assert p.exception is exc  # kept after close()


def test_exception_whose_init_takes_other_arguments_is_rebuilt(ctx_fs):
    p = _joined(ctx_fs, helpers.raise_bad_init)
    exc = p.exception
    assert type(exc) is helpers.BadInitError
    assert exc.args == ("left-right",) and (exc.a, exc.b) == ("left", "right")
    assert isinstance(exc.__cause__, RemoteTraceback)


@pytest.mark.parametrize("target,type_name,message", [
    (helpers.raise_unpicklable, "RuntimeError", "holds a lock"),
    (helpers.raise_child_only_class, "_polyproc_child_only.ChildOnlyError",
     "made in the child"),
])
def test_exception_that_cannot_be_rebuilt_is_a_remote_error(ctx_fs, target,
                                                            type_name, message):
    p = _joined(ctx_fs, target)
    assert p.exitcode == 1
    exc = p.exception
    assert isinstance(exc, RemoteError)
    assert (exc.type_name, exc.message) == (type_name, message)
    assert message in exc.remote_traceback


def test_huge_exception_does_not_block_the_child(ctx_fs):
    p = _joined(ctx_fs, helpers.raise_huge, 1_000_000)
    assert p.exitcode == 1
    assert isinstance(p.exception, RemoteError)
    assert p.exception.type_name == "ValueError"
    assert p.exception.message.startswith("xxxx")


def test_exception_is_none_for_success_and_system_exit(ctx_fs):
    assert _joined(ctx_fs, helpers.noop).exception is None
    p = _joined(ctx_fs, helpers.exit_with, 5)
    assert (p.exitcode, p.exception) == (5, None)


def test_keyboard_interrupt_in_run_is_reported():
    ctx = polyproc.get_context("fork")
    p = _joined(ctx, helpers.raise_keyboard_interrupt)
    assert p.exitcode == 1
    assert type(p.exception) is KeyboardInterrupt


def test_exception_does_not_block_while_the_child_runs():
    ctx = polyproc.get_context("fork")
    started = ctx.Event()
    p = _started(ctx, helpers.wait_forever, started)
    try:
        assert started.wait(JOIN_S)
        t0 = time.monotonic()
        assert p.exception is None
        assert time.monotonic() - t0 < 1.0
    finally:
        p.kill()
        p.join(JOIN_S)


# --- standard input --------------------------------------------------------

def test_input_in_a_child_says_how_to_pass_data(ctx):
    p = _joined(ctx, helpers.call_input)
    assert p.exitcode == 1
    exc = p.exception
    assert isinstance(exc, StdinUnavailableError) and isinstance(exc, EOFError)
    text = str(exc)
    assert "no standard input" in text
    assert "args=" in text and "Queue" in text and "Pipe" in text
    assert p.name in text


def test_every_way_of_reading_stdin_raises_and_the_rest_works(ctx_fs):
    parent_conn, child_conn = ctx_fs.Pipe(duplex=False)
    p = _started(ctx_fs, helpers.probe_stdin, child_conn)
    child_conn.close()
    seen = _recv(parent_conn)
    p.join(JOIN_S)
    for way in ("read", "readline", "readlines", "iterate", "buffer", "input"):
        assert seen[way][0] == "StdinUnavailableError", way
        assert "no standard input" in seen[way][1]
    assert seen["isatty"] is False
    assert seen["fileno_is_devnull"] is True
    assert seen["closed"] is False


# --- daemons never outlive their parent ---------------------------------------

def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to *timeout* s for a process that is not our child to end.

    A pidfd turns readable when the process exits (zombie or reaped), so
    this waits on an event rather than polling.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def _start_parent(method: str, kind: str):
    parent = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "daemon_parent.py"), method, kind],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = parent.stdout.readline()  # bounded by the script's own 30 s waits
    assert line.startswith("child "), f"parent said {line!r}"
    pids = [int(pid) for pid in line.split()[1:]]
    return parent, (pids if kind == "pool" else pids[0])


@pytest.mark.timeout(60)
def test_daemon_child_dies_within_a_second_of_a_sigkilled_parent(ctx):
    parent, child_pid = _start_parent(ctx.get_start_method(), "daemon")
    assert not _gone(child_pid)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(JOIN_S)
    killed = time.monotonic()
    gone = _wait_gone(child_pid, 5.0)
    elapsed = time.monotonic() - killed
    if not gone:
        os.kill(child_pid, signal.SIGKILL)
    assert gone and elapsed < 1.0, \
        f"daemon child outlived its parent by {elapsed:.2f} s"


@pytest.mark.timeout(60)
def test_pool_workers_die_within_a_second_of_a_sigkilled_parent(ctx_fs):
    # Pool workers are daemon PolyProcesses: the watchdog covers them too.
    parent, worker_pids = _start_parent(ctx_fs.get_start_method(), "pool")
    assert len(worker_pids) >= 2 and not any(map(_gone, worker_pids))
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(JOIN_S)
    killed = time.monotonic()
    gone = [_wait_gone(pid, 5.0) for pid in worker_pids]
    elapsed = time.monotonic() - killed
    for pid, ended in zip(worker_pids, gone):
        if not ended:
            os.kill(pid, signal.SIGKILL)
    assert all(gone) and elapsed < 1.0, \
        f"pool workers outlived their parent by {elapsed:.2f} s"


@pytest.mark.timeout(60)
def test_non_daemon_child_keeps_the_stdlib_behaviour():
    parent, child_pid = _start_parent("fork", "nondaemon")
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(JOIN_S)
    try:
        # Twice the daemon bound: a non-daemon child is left running.
        assert not _wait_gone(child_pid, 2.0)
    finally:
        os.kill(child_pid, signal.SIGKILL)


# --- the __main__ guard ------------------------------------------------------

def _run_script(name: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / name)],
                          env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=JOIN_S)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_missing_main_guard_gives_one_clear_message(method):
    result = _run_script("no_main_guard.py", {"POLYPROC_TEST_METHOD": method})
    err = result.stderr
    assert err.count("if __name__ == '__main__':") == 1, err
    assert "no_main_guard.py" in err
    assert "Traceback" not in err and "RuntimeError" not in err
    # The parent itself is fine; its child exited with code 1.
    assert result.returncode == 0
    assert "parent done exitcode=1" in result.stdout


def test_fork_needs_no_main_guard():
    result = _run_script("no_main_guard.py", {"POLYPROC_TEST_METHOD": "fork"})
    assert result.returncode == 0 and result.stderr == ""
    assert "parent done exitcode=0" in result.stdout


@pytest.mark.parametrize("server_exit,expected", [(78, "MainGuardError"),
                                                  (3, "EOFError")])
def test_fork_server_dying_on_the_main_guard_raises_main_guard_error(server_exit,
                                                                     expected):
    # Python 3.12+ fork servers preload __main__; 3.11's never do, so the
    # fork server's refusal is simulated by a preload module that exits with
    # the same status.  Any other death keeps the stdlib's error.
    result = _run_script("forkserver_dies.py",
                         {"POLYPROC_TEST_PRELOAD_EXIT": str(server_exit)})
    assert result.returncode == 0, result.stderr
    assert f"raised {expected}\n" in result.stdout
    if expected == "MainGuardError":
        assert "if __name__ == '__main__':" in result.stdout


def _fds_held_by_joined(ctx, target, n=5):
    before = len(os.listdir("/proc/self/fd"))
    procs = [_started(ctx, target, str(i)) for i in range(n)]
    for p in procs:
        p.join(JOIN_S)
    return len(os.listdir("/proc/self/fd")) - before, procs


def test_join_releases_the_exception_channel():
    ours, procs = _fds_held_by_joined(polyproc.get_context("fork"),
                                      helpers.raise_value_error)
    theirs, _ = _fds_held_by_joined(multiprocessing.get_context("fork"),
                                    helpers.raise_value_error)
    # A joined Process object holds what the stdlib's holds, no more.
    assert ours == theirs
    assert [str(p.exception) for p in procs] == [str(i) for i in range(5)]


def test_watchdog_is_not_fooled_by_a_reused_sentinel_descriptor():
    ctx = polyproc.get_context("fork")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    # 0.5 s: five watchdog rounds; the child reports only if it survives.
    p = _started(ctx, helpers.reuse_parent_sentinel_fd, child_conn, 0.5,
                 daemon=True)
    child_conn.close()
    assert _recv(parent_conn) == ("alive", True)
    p.join(JOIN_S)
    assert p.exitcode == 0


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_unguarded_set_start_method_gives_the_main_guard_message(method):
    result = _run_script("unguarded_set_start_method.py",
                         {"POLYPROC_TEST_METHOD": method})
    err = result.stderr
    assert "set_start_method() was called while the main module" in err
    assert err.count("if __name__ == '__main__':") == 1, err
    assert "context has already been set" not in err and "Traceback" not in err
    assert result.returncode == 0
    assert "parent done exitcode=1" in result.stdout


@pytest.mark.timeout(20)
def test_send_exception_never_blocks_on_a_small_pipe():
    import fcntl

    from polyproc._process.child import send_exception
    from polyproc._transport.remote_errors import rebuild_exception
    reader, writer = polyproc.Pipe(duplex=False)
    try:
        fcntl.fcntl(writer.fileno(), 1031, 4096)  # F_SETPIPE_SZ: one page
        # Nobody reads until send_exception has returned: a payload over
        # 4 KiB would block here for ever.
        send_exception(writer, ValueError("y" * 100_000))
        exc = rebuild_exception(reader.recv_bytes())
    finally:
        reader.close()
        writer.close()
    assert isinstance(exc, RemoteError) and exc.type_name == "ValueError"
    assert exc.message.startswith("yyy")


def test_exception_of_a_grandchild_reaches_the_child(ctx):
    p = _joined(ctx, helpers.start_failing_grandchild, ctx.get_start_method())
    assert p.exitcode == 1
    assert type(p.exception) is RuntimeError
    assert str(p.exception) == "grandchild: ValueError: from the grandchild"
