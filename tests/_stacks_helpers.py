"""Tasks for the stack tests (importable, so spawn workers find them).

Each blocking task first creates the file *started* (the test waits for
it), then blocks in C on the line marked ``# BLOCKS:`` with its kind; the
tests find that line's number with ``blocking_line``.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path


def _started(path: str) -> None:
    Path(path).touch()


def blocked_in_sleep(started: str) -> None:
    _started(started)
    time.sleep(60)  # BLOCKS: sleep


def blocked_in_lock(started: str) -> None:
    lock = threading.Lock()
    lock.acquire()
    _started(started)
    lock.acquire()  # BLOCKS: lock


def blocked_in_read(started: str) -> None:
    read_end, write_end = os.pipe()
    _started(started)
    os.read(read_end, 1)  # BLOCKS: read
    os.close(write_end)


def deaf_to(signum: int, started: str) -> None:
    """Block *signum* in this (the worker's main) thread, then sleep."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    _started(started)
    time.sleep(60)  # BLOCKS: deaf


def sleep_if(started: str | None) -> None:
    """Return at once, or with a path: create it and block."""
    if started is not None:
        _started(started)
        time.sleep(60)  # BLOCKS: sleep_if


def waits_for(event: threading.Event) -> None:
    event.wait(60)  # BLOCKS: event


def fork_and_report(signum: int) -> dict:
    """Whether *signum* is caught here (a worker) and in a child forked from
    here, and whether the child has this worker's stack file open."""
    from polyproc._pool._backends.process import stacks
    assert stacks._installed is not None
    fd = stacks._installed[1]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once
        try:
            os.close(read_end)
            try:
                os.fstat(fd)
                fd_open = "1"
            except OSError:
                fd_open = "0"
            report = f"{int(caught(signum))}{fd_open}".encode()
            os.write(write_end, report)
        finally:
            os._exit(0)
    os.close(write_end)
    report = os.read(read_end, 2)
    os.close(read_end)
    os.waitpid(pid, 0)
    return {"worker": caught(signum), "child": report[0:1] == b"1",
            "child_has_file": report[1:2] == b"1",
            "file": os.readlink(f"/proc/self/fd/{fd}")}


def install_then_uninstall(signum: int) -> dict:
    """``install``, then ``uninstall`` as a worker's end does (in a worker:
    its own registration is undone first)."""
    import faulthandler

    from polyproc._pool._backends.process import stacks
    stacks.uninstall(ignore_later=False)
    fd = stacks.install(signum)
    during = caught(signum)
    stacks.uninstall()
    try:
        os.fstat(fd)
        fd_open = True
    except OSError:
        fd_open = False
    return {"during": during, "after": caught(signum), "fd_open": fd_open,
            "still_registered": faulthandler.unregister(signum)}


def report_at_exit(signum: int, path: str) -> None:
    """A pool initializer: when this process exits, after ``worker_main``
    has returned, write to *path* whether *signum* is still caught there,
    whether it is ignored, and whether stacks.py still holds a file."""
    from multiprocessing import util

    from polyproc._pool._backends.process import stacks

    def report() -> None:
        ignored = bool(_sigset("self", "SigIgn") & (1 << (signum - 1)))
        Path(path).write_text(f"{int(caught(signum))}{int(ignored)}"
                              f"{int(stacks._installed is not None)}")

    util.Finalize(None, report, exitpriority=0)


def caught(signum: int, pid: int | str = "self") -> bool:
    """Whether process *pid* has a handler for *signum* (``SigCgt``)."""
    return bool(_sigset(pid, "SigCgt") & (1 << (signum - 1)))


def pending(signum: int, pid: int) -> bool:
    """Whether *signum* waits, blocked, for process *pid*'s main thread."""
    return bool(_sigset(pid, "SigPnd") & (1 << (signum - 1)))


def blocks(signum: int, pid: int) -> bool:
    """Whether process *pid*'s main thread blocks *signum* (``SigBlk``)."""
    return bool(_sigset(pid, "SigBlk") & (1 << (signum - 1)))


def _sigset(pid: int | str, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1], 16)
    raise KeyError(key)


def blocking_line(kind: str) -> int:
    """The line number of the line marked ``# BLOCKS: kind`` in this file."""
    lines = Path(__file__).read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.endswith(f"# BLOCKS: {kind}"))


def wait_for_file(path: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not created within {seconds} s")
        time.sleep(0.005)


def write_over_stack_file(path: str, started: str, release: str) -> str:
    """Put a file of the task's own at the fd number of this worker's stack
    file (``dup2``, as code that redirects a descriptor does), write to it,
    and wait for *release* to exist: what the file then holds."""
    from polyproc._pool._backends.process import stacks
    assert stacks._installed is not None
    stack_fd = stacks._installed[1]
    with open(path, "w") as f:
        f.write("the task's own data\n")
        f.flush()
        os.dup2(f.fileno(), stack_fd)
    _started(started)
    wait_for_file(release)
    os.close(stack_fd)
    return Path(path).read_text()


def reset_signal(signum: int, action: int) -> int:
    """Give *signum* the default action, or ignore it, as a task may; this
    worker's pid."""
    signal.signal(signum, action)
    return os.getpid()


def blocked_until(release: str, started: str) -> int:
    """Block until *release* exists; this worker's pid."""
    _started(started)
    wait_for_file(release, 60)
    return os.getpid()


def deaf_then_count_dumps(signum: int, release: str, started: str) -> int:
    """Block *signum*, wait for *release*, unblock it: how many dumps the
    signals that waited meanwhile wrote into this worker's stack file."""
    from polyproc._pool._backends.process import stacks
    assert stacks._installed is not None
    signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    _started(started)
    wait_for_file(release, 60)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})  # they are handled here
    fd = stacks._installed[1]
    dump = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
    return dump.count("Current thread ")
