"""The scheduler's side of its worker processes: a handle on each, how one starts, how they stop.

The scheduler (scheduler.py) decides when a worker starts, is replaced or
stops; this module does it.  A worker is started from the thread that
created the pool (the first ones) or, under fork, by the fork template
(fork_template.py) for every later one; either way it is born deaf to
SIGINT (``sigint_shielded_start``) and unblocks it once its own handler is
in place (worker.py).
"""
from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time
from multiprocessing import connection as mp_connection
from typing import Any, Iterable, Iterator

from ... import messages as m
from ...chunks import TaskChunk
from .worker import WorkerConfig, worker_main

__all__ = ["WorkerHandle", "sigint_shielded_start", "start_worker", "clear_slot",
           "stop_processes"]


class WorkerHandle:
    """The scheduler's view of one worker process."""

    __slots__ = ("process", "conn", "slot", "ready", "assigned", "dispatch_ends",
                 "retiring", "shutdown_sent", "timed_out", "chunks_given",
                 "cancelled_sinks", "spawned", "replaces", "stacks_fd")

    def __init__(self, process, conn, slot: int, spawned: float = 0.0,
                 replaces: int | None = None):
        self.process = process
        self.conn = conn
        self.slot = slot
        self.spawned = spawned  # time.monotonic() when it was asked for
        self.replaces = replaces  # pid of the previous worker in its slot
        self.ready = False
        self.assigned: collections.deque[TaskChunk] = collections.deque()
        self.dispatch_ends: collections.deque[int] = collections.deque()
        self.retiring = False
        self.shutdown_sent = False
        self.timed_out: tuple[int, int] | None = None  # (chunk_id, task index)
        self.chunks_given = 0
        # Calls whose tasks it held when it was killed to cancel them.
        self.cancelled_sinks: set = set()
        # Its stack dump file's fd number in the worker (stacks.py), from
        # WorkerReady; -1: none.
        self.stacks_fd = -1


def clear_slot(table: Any, slot: int) -> None:
    """Zero the progress slot of *slot* for the worker about to take it."""
    base = slot * m.SLOT_WIDTH
    for i in range(m.SLOT_WIDTH):
        table[base + i] = 0.0


def start_worker(ctx: Any, table: Any, slot: int, config: WorkerConfig,
                 number: int, spawned: float = 0.0,
                 replaces: int | None = None) -> WorkerHandle:
    """Start worker number *number* for *slot* from this thread, with *ctx*.

    *spawned* and *replaces* are recorded on its handle (``WorkerHandle``).

    Raises what ``Process.start()`` raises.
    """
    parent_conn, child_conn = mp_connection.Pipe(duplex=True)
    process = ctx.Process(
        target=worker_main, args=(child_conn, table, slot, config),
        name=f"PolyPoolWorker-{number}", daemon=True)
    with sigint_shielded_start(ctx.get_start_method()):
        try:
            process.start()
        finally:
            child_conn.close()
    return WorkerHandle(process, parent_conn, slot, spawned, replaces)


def stop_processes(processes: list, grace: float) -> None:
    """SIGTERM to each process still running, SIGKILL to those still there
    *grace* seconds later; returns once they are gone (or a second more)."""
    for process in processes:
        if process.exitcode is None:
            try:
                process.terminate()
            except (OSError, ValueError):
                pass
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            try:
                process.kill()
            except (OSError, ValueError):
                pass
            process.join(1.0)


@contextlib.contextmanager
def sigint_shielded_start(start_method: str) -> Iterator[None]:
    """Start a worker so that it is born deaf to SIGINT.

    A Ctrl-C reaches the whole process group; a worker still starting up
    would print a KeyboardInterrupt traceback before worker_main installs
    its own handler.  A forked child inherits the signal mask of the thread
    that forks it, so SIGINT is blocked here (worker_main unblocks it).  A
    spawned child (fork + exec) starts with an empty mask but inherits
    SIG_IGN, which only the main thread can set: it is set too when this
    runs there, the initial workers' case.  SIGINT stays blocked while it
    is ignored, so a Ctrl-C in this window is kept pending, not lost, and
    reaches the caller once the handler is back.

    The fork server is started (if it is not running) *before* SIGINT is
    shielded: a fork server exec'd inside the shield would inherit SIG_IGN
    (or the blocked mask) for good, and so would every process the program
    later starts through it, its own ``Process`` objects included: they
    would ignore Ctrl-C and ``Process.interrupt()``.
    """
    if start_method == "forkserver":
        start_fork_server()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    # A handler installed outside Python reads as None and could not be put
    # back: then the handler is left alone.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGINT)
        if previous is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


# What a fork server started by polyproc imports before it forks anything:
# the pool engine, so that each fork template and worker it forks has it
# already.  Without it every child of the server imported polyproc again:
# about 85 ms per Pool() in a process running other threads (whose template
# the fork server starts), against 10 ms for a forked pool.
ENGINE_MODULES = ("polyproc", "polyproc._pool._backends.process.fork_template",
                  "polyproc._pool._backends.process.worker")


def start_fork_server(also_preload: Iterable[str] = ()) -> None:
    """Make sure the stdlib's fork server runs, preloaded with the pool
    engine and *also_preload* if this call starts it (one already running
    is left as it is; ``__main__`` and what the program asked to preload
    stay first)."""
    from multiprocessing import forkserver
    server: Any = forkserver._forkserver  # its private state: see below
    _forget_inherited_fork_server(server)
    with server._lock:
        starting = server._forkserver_pid is None
        preload = list(getattr(server, "_preload_modules", ["__main__"]))
    if starting:
        wanted = [*ENGINE_MODULES, *also_preload]
        server.set_forkserver_preload(
            preload + [name for name in dict.fromkeys(wanted) if name not in preload])
    forkserver.ensure_running()


def _forget_inherited_fork_server(server: Any) -> None:
    """Let this process start its own fork server if its record is inherited.

    A process forked from one that had started the stdlib's fork server (a
    manager's server process, a forked child) inherits the record of that
    server; ``ensure_running`` then fails with ``ChildProcessError`` (it
    waits for a process that is not its child).  The record is forgotten
    (this process's copy of the server's "alive" descriptor closed), so
    that ``ensure_running`` starts a server of this process.
    """
    with server._lock:
        pid = server._forkserver_pid
        if pid is None:
            return
        try:  # WNOWAIT: a server of ours that exited is left for ensure_running
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            return
        except ChildProcessError:
            pass
        try:
            os.close(server._forkserver_alive_fd)
        except (OSError, TypeError):
            pass
        server._forkserver_alive_fd = None
        server._forkserver_address = None
        server._forkserver_pid = None
