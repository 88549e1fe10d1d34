"""The fork template: a single-threaded process that forks replacement workers.

Why.  Under the fork start method a pool must start workers long after it
was created: a worker is killed, times out, or retires (``maxtasksperchild``,
``max_memory_per_child``).  The scheduler did that from its own thread,
while the caller's threads (and other pools' schedulers) ran.  A child
forked from a multi-threaded process inherits every lock exactly as it was
at the fork: one held by another thread (a user's ``threading.Lock``, a C
library's malloc lock) stays held for ever in the child, which then hangs
the first time it takes it; ``logging``'s fork hook even takes its module
lock before every fork, so the *scheduler* stalled for as long as any
thread held that lock.  Python 3.12+ warns (``DeprecationWarning: This
process is multi-threaded, use of fork() may lead to deadlocks in the
child``), and 3.14 moved the default start method off fork for this reason.

The design.  ``Pool()`` (in the caller's thread, where the stdlib forks its
workers, before the PoolScheduler thread starts) forks the first workers,
as the stdlib does, then one *template* process.  The template runs no
thread and no user code: it waits for requests from the scheduler and
forks every later worker from its one thread, so no worker is ever forked
from a multi-threaded process by polyproc::

  caller's process                               | template (one thread)    | workers
                                                 |                          |
  Pool(): first workers: ctx.Process.start() ----+--------------------------+-> worker_main
          ForkTemplate(): fork ------------------+-> template_main          |
  PoolScheduler thread, _spawn_worker            |                          |
   -> ForkTemplate.spawn: SpawnRequest ----------+-> Pipe(), Popen: fork ---+-> worker_main
                                      <----------+-- Spawned + 2 fds        |   (its end of the
      (its end of the worker's pipe and the      |   (SCM_RIGHTS)           |    pipe, the write
       read end of its sentinel pipe)            |                          |    end of the
   on_worker_exit: sentinel at EOF               |   sentinel at EOF:       |    sentinel pipe)
   -> TemplateWorker.join <- WorkerExited(pid, --+-- waitpid (it is the     |
                                   exit code)    |   parent)                |

* Connection: one Unix socket pair made at ``Pool()``; requests and
  replies are fixed-size records (``_RECORD``), typed as one NamedTuple per
  kind; file descriptors travel with ``Spawned`` as ``SCM_RIGHTS``.
* Sentinel: the worker is not the caller's child, so ``waitpid`` cannot
  tell the caller when it exits.  The stdlib's fork Popen already makes a
  pipe whose write end only the child holds; the template sends its read
  end (EOF: the worker exited) and keeps a copy to know when to reap.
* Exit code: the template is the real parent; it reaps the worker and
  reports ``os.waitstatus_to_exitcode`` (negative signal numbers included,
  which ``describe_exit`` names).  ``TemplateWorker`` gives the scheduler
  the part of ``Process`` it uses on top of that.
* Parent death: the template checks its parent's sentinel and
  ``os.getppid()`` at least every ``PARENT_POLL_SECONDS`` and exits when
  the parent is gone; each worker's daemon watchdog (``_process/child.py``) then
  sees its own parent, the template, go.  Worst case about 0.2 s.
* Shutdown: when the scheduler stops its workers it sends ``StopRequest``;
  the template reports the exits of the workers it forked, then exits, so
  its exit overlaps theirs.
* State: a worker sees the caller's memory as of ``Pool()``, whenever it
  is forked, which is what the stdlib's first workers see.  (The stdlib
  forks a replacement from its handler thread, so it sees later state.)
* The first workers are the caller's children; replacements are the
  template's, so ``multiprocessing.active_children()`` lists the first
  workers still running, not the replacements, and not the template (it is
  forked with ``os.fork``, not as a ``Process``: see ``_TemplateChild``).
  ``parent_process()`` in every worker is the caller, as under forkserver.
* A caller that runs other threads (its own, a ThreadPool's: another
  pool's scheduler thread is paused instead, ``_process/fork_pause.py``)
  and asked for it (``POLYPROC_THREADED_FORK=forkserver``; by default it
  forks as above, keeping fork semantics, as the stdlib does):
  ``Pool()`` forks nothing (``template_start_method``).  The stdlib's fork
  server starts the template (``_ForkServerTemplateChild``), which forks
  every worker, the first ones too: ``Pool()`` sends their requests
  (``request``) and the PoolScheduler thread ``collect``s them.  The
  template then has the fork server's state (the main module imported
  again), not the caller's: forkserver semantics for that pool.

Why the first workers are not forked by the template when the caller can
fork them: the first result would wait for the template to run, fork and
answer (two process hand-offs more); measured on the 2-core development
machine, a ``Pool(2)`` start + first result + close fell from 0.7-0.8x the
stdlib to 0.55x that way.  What remains is the template's own fork and
exit, about 1.5 ms of the caller's time per pool (docs/pool.md).

Rejected alternatives (see docs/pool.md): forking replacements from the
scheduler thread (the bug); from a caller's thread (a worker dies while no
caller thread is in a Pool call); spawn or forkserver for replacements
only (other state than the first workers, the main-module import and its
guard, 50 ms per worker); ``os.posix_spawn``/``vfork`` (spawn's semantics,
not fork's); a template made on the first replacement (from the scheduler
thread: the same bug); a worker that forks its own replacement (its state
is no longer that of Pool() time; it is multi-threaded too, its watchdog).

The stdlib's fork ``Popen`` launches each worker in the template, so the
child side (``_bootstrap``, the at-exit handling that differs between
Python versions) is the stdlib's own.
"""
from __future__ import annotations

import array
import os
import signal
import socket
import struct
import sys
import threading
import time
import weakref
from multiprocessing import connection as mp_connection
from multiprocessing import popen_fork, util
from multiprocessing.process import current_process, parent_process
from typing import Any, Callable, NamedTuple, Sequence

from ...._exceptions import ProcessError
from .worker import worker_main

__all__ = ["ForkTemplate", "TemplateWorker", "template_main", "template_start_method"]

PARENT_POLL_SECONDS = 0.1   # how often the template checks that its parent lives
REAP_POLL_SECONDS = 0.0005  # between a sentinel's EOF and the exit status
SEND_TIMEOUT_SECONDS = 5.0  # a parent that reads nothing for this long is gone
CLOSE_TIMEOUT_SECONDS = 1.0


# --- the wire: one fixed-size record per message ----------------------------

class SpawnRequest(NamedTuple):
    """Scheduler -> template: fork a worker for *slot*, named by *number*."""
    slot: int
    number: int


class StopRequest(NamedTuple):
    """Scheduler -> template: fork no more; exit once your workers have."""


class Spawned(NamedTuple):
    """Template -> scheduler, with two fds: the pipe's end, the sentinel."""
    slot: int
    pid: int


class SpawnFailed(NamedTuple):
    """Template -> scheduler: fork (or the pipe) failed with *errno*."""
    slot: int
    errno: int


class WorkerExited(NamedTuple):
    """Template -> scheduler: worker *pid* exited (``Process.exitcode``)."""
    pid: int
    exitcode: int


# kind byte, three int32 fields (unused ones are 0)
_RECORD = struct.Struct("=Bxxxiii")
_KINDS: dict[int, type[NamedTuple]] = {1: SpawnRequest, 2: StopRequest, 3: Spawned,
                           4: SpawnFailed, 5: WorkerExited}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}
_FDS_SPACE = socket.CMSG_SPACE(2 * array.array("i").itemsize)


def _encode(message: NamedTuple) -> bytes:
    fields = tuple(message) + (0,) * (3 - len(message))
    return _RECORD.pack(_KIND_OF[type(message)], *fields)


def _decode(data: bytes) -> Any:
    kind, *fields = _RECORD.unpack(data)
    cls = _KINDS[kind]
    return cls(*fields[:len(cls._fields)])


def _send(sock: socket.socket, message: NamedTuple, fds: tuple[int, ...] = ()) -> None:
    data = _encode(message)
    if fds:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        sent = sock.sendmsg([data], rights)
    else:
        sent = sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def _receive(sock: socket.socket) -> tuple[Any, list[int]] | None:
    """One record and the fds that came with it; None at EOF."""
    flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
    data, ancillary, _, _ = sock.recvmsg(_RECORD.size, _FDS_SPACE, flags)
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    while len(data) < _RECORD.size:  # a stream socket may split a record
        more = sock.recv(_RECORD.size - len(data))
        if not more:
            for fd in fds:
                os.close(fd)
            return None
        data += more
    return _decode(data), list(fds)


# --- the template process ---------------------------------------------------

def template_main(sock: socket.socket, parent_sentinel: int, parent: tuple[int, str],
                  ctx: Any, table: Any, config: Any, name_format: str,
                  caller_is_os_parent: bool = True) -> None:
    """The template's whole life, in the child of the fork in ``ForkTemplate``.

    *parent_sentinel* reaches EOF when the caller is gone; *parent* is the
    caller's pid and process name; *caller_is_os_parent* is False when the
    fork server started the template (then ``os.getppid()`` is the fork
    server, and only the sentinel tells).  *ctx* makes the worker Process objects
    (polyproc's, or the stdlib's when an Executor was given a stdlib
    context); *table* and *config* are the pool's progress table and
    ``WorkerConfig``, inherited by the fork.
    """
    # Born with SIGINT blocked (ProcessScheduler's _sigint_shielded_start);
    # ignored as well, so that a Ctrl-C never ends the template.  Workers
    # inherit both and install their own handler (worker_main).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock.settimeout(SEND_TIMEOUT_SECONDS)
    _Template(sock, parent_sentinel, parent, ctx, table, config, name_format,
              caller_is_os_parent).serve()


class _Template:
    """The template's loop: fork on request, reap, report, watch the parent."""

    def __init__(self, sock: socket.socket, parent_sentinel: int, parent: tuple[int, str],
                 ctx: Any, table: Any, config: Any, name_format: str,
                 caller_is_os_parent: bool = True):
        self.sock = sock
        self.caller_is_os_parent = caller_is_os_parent
        self.parent_sentinel = parent_sentinel
        self.parent_pid, self.parent_name = parent
        self.ctx = ctx
        self.table = table
        self.config = config
        self.name_format = name_format
        self.live: dict[int, popen_fork.Popen] = {}  # by sentinel fd
        self.exiting: list[popen_fork.Popen] = []    # sentinel at EOF, not reaped yet
        self.stopping = False  # asked to stop: exit once no worker is left

    def serve(self) -> None:
        while not (self.stopping and not self.live and not self.exiting):
            waitables: list = [self.sock, *self.live] if not self.stopping else [*self.live]
            waitables.append(self.parent_sentinel)
            timeout = REAP_POLL_SECONDS if self.exiting else PARENT_POLL_SECONDS
            ready = mp_connection.wait(waitables, timeout)
            if self.parent_is_gone(ready):
                return
            for obj in ready:
                if obj is self.sock:
                    if not self.handle_request():
                        return
                elif obj in self.live:
                    self.exiting.append(self.live.pop(obj))
            self.reap()

    def parent_is_gone(self, ready: list) -> bool:
        # The sentinel reaches EOF when the caller is gone, unless a process
        # the caller forked later holds a copy of its write end: getppid
        # covers that case (as in the workers' watchdog).
        if self.parent_sentinel in ready:
            return True
        return self.caller_is_os_parent and os.getppid() != self.parent_pid

    def handle_request(self) -> bool:
        """Serve one request; False when the template must exit at once."""
        try:
            received = _receive(self.sock)
        except OSError:
            return False
        if received is None:  # the caller closed its end: no one to report to
            return False
        request = received[0]
        if isinstance(request, StopRequest):
            self.stopping = True
        elif isinstance(request, SpawnRequest):
            return self.spawn(request)
        return True

    def spawn(self, request: SpawnRequest) -> bool:
        try:
            parent_conn, child_conn = mp_connection.Pipe(duplex=True)
        except OSError as exc:
            return self.reply(SpawnFailed(request.slot, exc.errno or 0))
        try:
            process = self.ctx.Process(
                target=_run_worker,
                args=((self.sock, parent_conn), child_conn, self.table,
                      request.slot, self.config),
                name=self.name_format.format(request.number), daemon=True)
            # parent_process() in the worker is the pool's owner, as the
            # stdlib's workers see it (and as forkserver's children do).
            process._parent_pid = self.parent_pid
            process._parent_name = self.parent_name
            try:
                popen = popen_fork.Popen(process)
            except OSError as exc:
                return self.reply(SpawnFailed(request.slot, exc.errno or 0))
            finally:
                child_conn.close()
            self.live[popen.sentinel] = popen
            return self.reply(Spawned(request.slot, popen.pid),
                              (parent_conn.fileno(), popen.sentinel))
        finally:
            parent_conn.close()

    def reap(self) -> None:
        waiting = []
        for popen in self.exiting:
            # EOF comes when the worker's files are closed, a moment before
            # it can be reaped: poll again on the next short timeout.
            code = popen.poll()
            if code is None:
                waiting.append(popen)
                continue
            popen.close()
            if not self.reply(WorkerExited(popen.pid, code)):
                self.exiting = []
                return
        self.exiting = waiting

    def reply(self, message: NamedTuple, fds: tuple[int, ...] = ()) -> bool:
        try:
            _send(self.sock, message, fds)
        except OSError:  # socket.timeout included: the caller reads nothing
            return False
        return True


def _run_worker(template_ends: tuple, conn: Any, table: Any, slot: int,
                config: Any) -> None:
    """A worker forked by the template: drop the template's ends, run the loop.

    *template_ends* are the template's socket and its copy of the caller's
    end of this worker's pipe; with the latter closed, the worker sees EOF
    when the scheduler closes the pipe.
    """
    for end in template_ends:
        end.close()
    worker_main(conn, table, slot, config)


# --- the caller's side --------------------------------------------------------

class _TemplateChild:
    """The template as a child of the caller: pid, sentinel, exit code.

    Forked with ``os.fork`` rather than as a ``multiprocessing.Process``:
    the stdlib's child bootstrap (stdin, after-fork hooks, finalizers, exit
    handlers) cost about 1.5 ms of CPU per pool and did nothing for a
    process that runs no user code.  Not in ``active_children()`` either:
    the template is the pool's machinery, not a process the caller made.
    """

    def __init__(self, run: Callable[[int], None]):
        """Fork; the child runs ``run(caller_sentinel)``, then exits.

        Raises ``OSError`` if the fork fails.
        """
        # The template's death: EOF on alive_r once the template (the only
        # holder of alive_w) has exited.  The caller's death, for the
        # template: EOF on caller_r once the caller's caller_w is gone.
        alive_r, alive_w = os.pipe()
        caller_r, caller_w = os.pipe()
        # As the stdlib's Popen does: unflushed output copied into the
        # template would be printed again by each worker it forks.
        util._flush_std_streams()  # type: ignore[attr-defined]  # private, not in typeshed
        try:
            pid = os.fork()
        except BaseException:
            for fd in (alive_r, alive_w, caller_r, caller_w):
                os.close(fd)
            raise
        if pid == 0:  # the template: never return into the caller's stack
            code = 1
            try:
                os.close(alive_r)
                os.close(caller_w)
                run(caller_r)
                code = 0
            finally:
                os._exit(code)
        os.close(alive_w)
        os.close(caller_r)
        self.pid = pid
        self.sentinel = alive_r
        self._caller_w = caller_w
        self.reaped = False
        self.exitcode: int | None = None  # None if unknown, even once reaped

    def join(self, timeout: float | None) -> None:
        """Wait up to *timeout* s for the template to exit, then reap it."""
        if self.reaped or not mp_connection.wait([self.sentinel], timeout):
            return
        self.reaped = True
        try:
            _, status = os.waitpid(self.pid, 0)  # exiting: its files are closed
        except ChildProcessError:  # reaped by someone else's waitpid(-1)
            return
        self.exitcode = os.waitstatus_to_exitcode(status)

    def kill(self) -> None:
        if not self.reaped:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Release the descriptors (after join)."""
        for fd in (self.sentinel, self._caller_w):
            try:
                os.close(fd)
            except OSError:
                pass


# Where a fork pool made while other threads run gets its workers
# (docs/pool.md, "Which forks can see other threads"): "fork" (the default) forks
# them from the caller as the stdlib does; "forkserver" has the fork
# server start the template, which forks them all.
THREADED_FORK_VARIABLE = "POLYPROC_THREADED_FORK"


def template_start_method() -> str:
    """How to start a pool's template now: ``"fork"`` or ``"forkserver"``.

    ``"fork"`` while this process runs no other Python thread, and by
    default also while it does: a fork pool's workers must see the
    caller's memory at ``Pool()`` (the globals a program set before it),
    as the stdlib's do; a pool whose workers silently lost them would
    break working programs.  ``"forkserver"`` there only when the program
    asked for it (``POLYPROC_THREADED_FORK=forkserver``): then nothing is
    forked from a process whose other threads may hold locks, at the price
    of forkserver semantics and start-up cost for that pool.  Threads
    outside Python (a BLAS library's) are not counted: they are the
    library's to make fork-safe.

    Raises ``ValueError`` naming the variable for a value other than
    ``fork`` or ``forkserver``.
    """
    wanted = os.environ.get(THREADED_FORK_VARIABLE, "fork")
    if wanted not in ("fork", "forkserver"):
        raise ValueError(f"{THREADED_FORK_VARIABLE} must be 'fork' or 'forkserver', "
                         f"not {wanted!r}")
    return "fork" if threading.active_count() == 1 else wanted


def _template_from_forkserver(sock: socket.socket, caller: tuple[int, str], ctx: Any,
                              table: Any, config: Any, name_format: str,
                              modules: list[str]) -> None:
    """The template's entry point when the fork server started it.

    First imports *modules*, those the caller had imported at ``Pool()``:
    a forked worker has them already, and a worker of this template should
    not pay for importing them (NumPy: a tenth of a second) at its first
    task, again after each replacement.
    """
    _import_quietly(modules)
    parent = parent_process()
    assert parent is not None  # a child of the fork server always has one
    template_main(sock, parent.sentinel, caller, ctx, table, config, name_format,
                  caller_is_os_parent=False)


def _import_quietly(modules: list[str]) -> None:
    """Import each of *modules* not imported yet; one that fails is skipped
    (it may need the caller's state: its worker imports it when it needs it)."""
    import importlib
    for name in modules:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except BaseException:  # whatever a module's import raises
            pass


def _modules_to_preload() -> list[str]:
    """The modules this process has imported, in import order, but the main
    module (the fork server imports it on its own, under its guard)."""
    return [name for name in list(sys.modules)
            if name not in ("__main__", "__mp_main__") and not name.startswith("__")]


class _ForkServerTemplateChild:
    """The template, started by the stdlib's fork server: the same
    interface as ``_TemplateChild``.

    For a caller that runs other threads: the fork server is a
    single-threaded process that execs Python and imports the main module,
    and forks the template; this process only sends it the arguments
    (pickled, with their descriptors).  The stdlib's ``Process`` rather
    than polyproc's: polyproc's starts a watchdog thread in a daemon child,
    and the template must run one thread.
    """

    def __init__(self, args: tuple):
        """Start the template with ``_template_from_forkserver(*args)``.

        Raises what ``Process.start()`` raises.
        """
        import multiprocessing  # the stdlib's: see above

        from .worker_handles import start_fork_server
        # A server this starts imports what the template would import
        # first (_template_from_forkserver): then every later template
        # forked from it starts with those modules loaded.
        start_fork_server(also_preload=args[-1])
        process = multiprocessing.get_context("forkserver").Process(
            target=_template_from_forkserver, args=args,
            name="PolyPoolTemplate", daemon=True)
        process.start()
        self._process = process
        self.pid: int = process.pid  # type: ignore[assignment]  # started
        self.sentinel: int = process.sentinel

    @property
    def reaped(self) -> bool:
        return self._process.exitcode is not None

    @property
    def exitcode(self) -> int | None:
        return self._process.exitcode

    def join(self, timeout: float | None) -> None:
        self._process.join(timeout)

    def kill(self) -> None:
        if not self.reaped:
            self._process.kill()

    def close(self) -> None:
        """Release the process's resources (after join)."""
        if self.reaped:
            self._process.close()


class ForkTemplate:
    """The caller's handle on a pool's template process.

    Thread-safe: the scheduler thread and, through ``Pool._pool``, any
    caller thread may ask for exit codes.
    """

    def __init__(self, ctx: Any, table: Any, config: Any,
                 name_format: str = "PolyPoolWorker-{}", start_method: str = "fork",
                 inherited_fds: Sequence[int] = ()):
        """Start the template: forked from the calling thread (*start_method*
        ``"fork"``: call it only while this process runs no other thread,
        see ``template_start_method``), or started by the stdlib's fork
        server (``"forkserver"``).

        *inherited_fds* are closed in a forked template: this process's
        ends of the pipes of workers it forked itself.

        Raises ``OSError`` when fork fails, what ``Process.start()`` raises
        under the fork server.
        """
        self._lock = threading.Lock()
        # Workers not known to have exited, by pid: an exit report sets the
        # worker's exit code (reports come in order, so a pid the system
        # reused is reported exited before it is spawned again).
        self._running: weakref.WeakValueDictionary[int, TemplateWorker] = \
            weakref.WeakValueDictionary()
        self._gone: str | None = None  # why no more workers can be started
        self._stopped = False
        self._closed = False
        # Replies to requests not collected yet, by slot: the first workers
        # are requested together (``request``) and collected later, and a
        # thread waiting for an exit report may read them first.
        self._replies: dict[int, tuple[Any, list[int]]] = {}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        caller = (os.getpid(), current_process().name)
        self.start_method = start_method
        if start_method == "fork":
            def run_template(caller_sentinel: int) -> None:  # in the child
                ours.close()  # only the caller holds the caller's end
                for fd in inherited_fds:
                    os.close(fd)
                template_main(theirs, caller_sentinel, caller, ctx, table, config,
                              name_format)

        try:
            if start_method == "fork":
                self._process: _TemplateChild | _ForkServerTemplateChild = \
                    _TemplateChild(run_template)
            else:
                self._process = _ForkServerTemplateChild(
                    (theirs, caller, ctx, table, config, name_format,
                     _modules_to_preload()))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._name_format = name_format

    @property
    def pid(self) -> int:
        return self._process.pid

    def spawn(self, slot: int, number: int) -> tuple[TemplateWorker, mp_connection.Connection]:
        """Have the template fork worker *number* for *slot*: ``request``, then ``collect``.

        Returns the worker and the caller's end of its duplex pipe.  Blocks
        for one fork in the template.  Raises ``ProcessError`` if the
        template is gone, ``OSError`` if its fork failed.
        """
        self.request(slot, number)
        return self.collect(slot, number)

    def request(self, slot: int, number: int) -> None:
        """Ask the template to fork worker *number* for *slot*; does not wait.

        ``collect(slot, number)`` gets the worker.  Raises ``ProcessError``
        if the template is gone.
        """
        with self._lock:
            if self._stopped:
                self._mark_gone("the pool is shutting down")
            self._check_usable()
            try:
                _send(self._sock, SpawnRequest(slot, number))
            except OSError as exc:
                self._mark_gone(_gone_words(self._process, exc))
                self._check_usable()

    def collect(self, slot: int, number: int) -> tuple[TemplateWorker, mp_connection.Connection]:
        """Wait for the worker requested for *slot* (``request``).

        Returns it and the caller's end of its duplex pipe.  Blocks until
        the template has forked it.  Raises ``ProcessError`` if the
        template is gone, ``OSError`` if its fork failed.
        """
        with self._lock:
            while slot not in self._replies:
                if self._next_record(None) is None:
                    self._check_usable()
            message, fds = self._replies.pop(slot)
            if isinstance(message, Spawned) and len(fds) == 2:
                worker = TemplateWorker(self, message.pid,
                                        self._name_format.format(number), fds[1])
                self._running[worker.pid] = worker
                return worker, mp_connection.Connection(fds[0])
            for fd in fds:
                os.close(fd)
            errno = message.errno if isinstance(message, SpawnFailed) else 0
            raise OSError(errno,
                          f"the pool's template process (pid {self.pid}) could "
                          f"not fork a worker: {os.strerror(errno)}")

    def wait_exit(self, worker: TemplateWorker, timeout: float | None) -> None:
        """Wait up to *timeout* s for the template to report *worker*'s exit.

        Sets ``worker.exitcode`` when it does.  Returns early, the code
        unknown, if the template died first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while worker._exitcode is None:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if self._next_record(remaining) is None:  # timed out, or gone
                    return

    def stop(self) -> None:
        """Ask the template to fork no more and to exit once its workers have.

        Does not wait for the template.  Idempotent; ``spawn`` raises
        ``ProcessError`` after it.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            try:
                _send(self._sock, StopRequest())
            except OSError:
                pass

    def close(self) -> None:
        """Stop the template and wait for it to exit (at most about two seconds).

        Call it once the workers it forked are gone: the template waits for
        them.  Idempotent.
        """
        self.stop()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._mark_gone("the pool was closed")
            for _, fds in self._replies.values():
                for fd in fds:
                    os.close(fd)
            self._replies.clear()
            self._sock.close()
            self._process.join(CLOSE_TIMEOUT_SECONDS)
            if not self._process.reaped:
                self._process.kill()
                self._process.join(CLOSE_TIMEOUT_SECONDS)
            self._process.close()

    # -- under the lock --------------------------------------------------------
    def _next_record(self, timeout: float | None) -> tuple[Any, list[int]] | None:
        """Read one record or mark the template gone.

        An exit report sets its worker's exit code; a reply to ``request``
        waits in ``_replies`` for ``collect``.

        Returns None on timeout or when the template is gone.
        """
        if self._gone is not None:
            return None
        ready = mp_connection.wait([self._sock, self._process.sentinel], timeout)
        if not ready:
            return None
        if self._sock not in ready:
            self._mark_gone(_gone_words(self._process))
            return None
        try:
            received = _receive(self._sock)
        except OSError as exc:
            self._mark_gone(_gone_words(self._process, exc))
            return None
        if received is None:
            self._mark_gone(_gone_words(self._process))
            return None
        message, fds = received
        if isinstance(message, WorkerExited):
            worker = self._running.pop(message.pid, None)
            if worker is not None:
                worker._exitcode = message.exitcode
        elif isinstance(message, (Spawned, SpawnFailed)):
            self._replies[message.slot] = received  # for collect()
        else:
            for fd in fds:
                os.close(fd)
        return received

    def _mark_gone(self, why: str) -> None:
        if self._gone is None:
            self._gone = why

    def _check_usable(self) -> None:
        if self._gone is not None:
            raise ProcessError(
                f"the pool's template process (pid {self.pid}), which forks its "
                f"workers, is gone: {self._gone}; no worker can be started, so the "
                f"pool is broken.  Was it killed from outside?  Create a new pool.")


def _gone_words(process: Any, error: OSError | None = None) -> str:
    """Why the template no longer answers, in words: its exit, or *error*."""
    process.join(CLOSE_TIMEOUT_SECONDS)
    code = process.exitcode
    if not process.reaped:
        return f"the connection to it failed ({error})" if error else "it stopped answering"
    if code is None:
        return "it exited (its exit status was collected elsewhere)"
    if code < 0:
        try:
            return f"it was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"it was killed by signal {-code}"
    return f"it exited with code {code}"


class TemplateWorker:
    """A worker forked by the template, as the scheduler sees it.

    The part of ``multiprocessing.Process``'s interface that the pool uses
    (``pid``, ``name``, ``daemon``, ``sentinel``, ``exitcode``, ``join``,
    ``is_alive``, ``terminate``, ``kill``, ``close``), for a process that is
    not this process's child: the sentinel is the read end of a pipe whose
    write end only the worker holds, the exit code comes from the template.
    """

    daemon = True

    def __init__(self, template: ForkTemplate, pid: int, name: str, sentinel: int):
        self.pid = pid
        self.name = name
        self.sentinel = sentinel
        self._template = template
        self._exitcode: int | None = None
        self._closed = False
        # Closed with the object, as the stdlib's Popen closes its sentinel.
        self._close_sentinel = util.Finalize(self, os.close, (sentinel,))

    ident = property(lambda self: self.pid)

    def __repr__(self) -> str:
        state = "started" if self._exitcode is None else f"exitcode={self._exitcode}"
        return f"<TemplateWorker name={self.name!r} pid={self.pid} {state} daemon>"

    @property
    def exitcode(self) -> int | None:
        """The exit code once the template has reported it; does not wait for it."""
        if self._exitcode is None and self._has_exited():
            self._template.wait_exit(self, 0)
        return self._exitcode

    def join(self, timeout: float | None = None) -> None:
        """Wait until the worker has exited and its exit code is known."""
        if self._exitcode is None:
            self._template.wait_exit(self, timeout)

    def is_alive(self) -> bool:
        return self._exitcode is None and not self._has_exited()

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def close(self) -> None:
        """Release the sentinel.  Raises ``ValueError`` while the worker runs."""
        if self.is_alive():
            raise ValueError("Cannot close a process while it is still running.")
        self._closed = True
        self._close_sentinel()

    def _has_exited(self) -> bool:
        if self._closed:
            return True
        try:
            return bool(mp_connection.wait([self.sentinel], 0))
        except (OSError, ValueError):  # closed
            return True

    def _signal(self, signum: int) -> None:
        # Only while the sentinel says the worker runs: once it has exited,
        # the template may have reaped it and its pid may belong to another
        # process.
        if self._exitcode is not None or self._has_exited():
            return
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass
