"""The Python stacks of a pool's workers, taken while their tasks run.

``Pool.stacks()``, ``Executor.stacks()`` and ``hang_report=`` ask each
worker what it is running *now*, even while its task is blocked in C
(``time.sleep``, a lock, a blocking read) or holds the GIL in a C loop:
code that waits for the worker's Python code to answer would wait for ever
exactly when the answer matters.  So the stack is written by
``faulthandler`` from the C signal handler, which walks the thread states
without the GIL and writes with plain ``write(2)`` calls.

The worker's side (``install``, ``uninstall``, from ``worker_main``):

* at start, before it reports ready, the worker creates an anonymous
  in-memory file (``memfd_create``, close-on-exec, append-only) and
  registers ``faulthandler`` on the stacks signal (below) to dump every
  thread into it (``chain=False``: the signal is ours alone); the file
  descriptor's number travels to the scheduler in ``WorkerReady`` (in
  ``StacksReady`` before that, when there is an initializer to run: an
  initializer may hang too).  No file is ever made on disk, so none can be
  left behind: the memory goes with the last descriptor, the worker's own.
* when ``worker_main`` ends it unregisters and closes the file, and the
  signal is ignored from then on (a request racing with the exit must not
  kill a worker that is shutting down).  A process a task forks gets
  neither the registration nor the file (``os.register_at_fork``): it is
  not a pool worker.  Nothing is ever registered in the pool's own process.

The parent's side (``collect``, called by the scheduler's ``stacks``):

* it opens the worker's file through ``/proc/<pid>/fd/<fd>``, checks that
  it is still the worker's stack file (a task may have put a file of its
  own at that number, and a reused pid has other files: neither is ever
  emptied or dumped into) and that the worker still catches the signal (a
  task that reset it to its default action would be killed by it), empties
  it, sends the signal (unless an earlier request's still waits: the
  worker blocks it) to the worker's main thread (``tgkill``: the thread that
  runs tasks, and only one handler at a time, so dumps never interleave)
  and polls, every millisecond and for at most *timeout* seconds for all
  workers together, until the dump is complete.
* "complete" is read from ``/proc/<pid>/status``, not guessed from the
  text (faulthandler writes no end marker): the handler runs with its
  signal blocked (``SigBlk``), so once the file is not empty (the handler
  has started) and the signal is neither pending nor blocked, the handler
  has returned.  A worker that dies meanwhile (its status is gone or
  ``Z``) gets a text that says so; one that never answers (it blocks the
  signal, or is stopped) gets one that says that, after *timeout*.

The signal: ``SIGRTMAX - 6`` by default (58 on Linux), a real-time signal
(so SIGUSR1 and SIGUSR2 stay the program's); the environment variable
``POLYPROC_STACKS_SIGNAL`` (a number, or a name such as ``SIGUSR2`` or
``SIGRTMIN+3``, read when a pool is created; ``0`` turns stacks off) picks
another where that one is taken.  A worker whose file the scheduler has
not heard of yet may not have registered, and is never sent the signal:
its default action would kill it.

Rejected: a thread in each worker that answers requests (it needs the GIL,
which a task in a C loop may hold, and a thread in every worker makes each
``fork`` a task does unsafe); a file on disk per worker (a pool killed with
SIGKILL leaves it behind; the memfd cannot outlive its worker); telling a
dump's end from its text (faulthandler writes no end marker, and the
number of threads is not known).

Linux only (``/proc``, ``memfd_create``, ``tgkill``); elsewhere a worker
reports no file and its text says stacks are not available.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any, Iterable, NamedTuple

from ... import messages as m

__all__ = ["ENV_SIGNAL", "configured_signal", "install", "uninstall", "StackRequest",
           "collect", "worker_stacks", "describe_work", "StallWatch", "hang_report_text",
           "POLL_SECONDS"]

ENV_SIGNAL = "POLYPROC_STACKS_SIGNAL"
POLL_SECONDS = 0.001
# The name of the workers' stack files: what the parent checks before it
# writes to a file it reached through /proc/<pid>/fd (_is_stack_file).
MEMFD_NAME = "polyproc-stacks"


def _default_signal() -> int:
    return int(signal.SIGRTMAX) - 6 if hasattr(signal, "SIGRTMAX") else 0


def configured_signal() -> int:
    """The signal workers dump their stacks on: ``POLYPROC_STACKS_SIGNAL``
    or the default; 0 for none.

    Raises ``ValueError`` naming the variable if it names no signal.
    """
    text = os.environ.get(ENV_SIGNAL, "").strip()
    if not text:
        return _default_signal()
    try:
        return _parse_signal(text)
    except (ValueError, AttributeError):
        raise ValueError(
            f"{ENV_SIGNAL}={text!r} names no signal: give a number, a name such as "
            f"SIGUSR2 or SIGRTMIN+3, or 0 to turn pool stacks off") from None


def _parse_signal(text: str) -> int:
    if text.lstrip("-").isdigit():
        number = int(text)
    else:
        name, plus, offset = text.upper().partition("+")
        name, minus, back = name.partition("-")
        number = int(getattr(signal, name.strip()))
        number += int(offset) if plus else 0
        number -= int(back) if minus else 0
    if number and number not in signal.valid_signals():
        raise ValueError(text)
    if number in (signal.SIGKILL, signal.SIGSTOP):
        raise ValueError(text)
    return number


# -- the worker's side -----------------------------------------------------
_installed: tuple[int, int] | None = None   # (signal, fd) in this process
_fork_hook_added = False


def install(signum: int) -> int:
    """Make this process dump its threads' stacks on *signum*; the fd they go to.

    Returns -1 (and registers nothing) where stacks are not available:
    *signum* is 0, or the platform has no ``memfd_create``.  Called by
    ``worker_main`` from the main thread, once per worker.
    """
    global _installed, _fork_hook_added
    if not signum or not hasattr(os, "memfd_create"):
        return -1
    import fcntl
    import faulthandler
    fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC)
    # Append-only: the parent empties the file before each request, and
    # the next dump must then start at its beginning.
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    faulthandler.register(signum, file=fd, all_threads=True, chain=False)
    _installed = (signum, fd)
    if not _fork_hook_added:
        os.register_at_fork(after_in_child=_forget_in_child)
        _fork_hook_added = True
    return fd


def uninstall(ignore_later: bool = True) -> None:
    """Undo ``install``: unregister, close the file.

    With *ignore_later*, the signal is ignored from now on (a worker on its
    way out), rather than given back its previous action (for a stdlib
    real-time signal: to terminate the process).
    """
    global _installed
    if _installed is None:
        return
    import faulthandler
    signum, fd = _installed
    _installed = None
    faulthandler.unregister(signum)
    if ignore_later:
        try:
            signal.signal(signum, signal.SIG_IGN)
        except (ValueError, OSError):
            pass  # not the main thread: the previous action stays
    try:
        os.close(fd)
    except OSError:
        pass


def _forget_in_child() -> None:
    # A process forked by a task is not a pool worker: nobody reads its
    # file, and a request must not reach it.
    uninstall(ignore_later=False)


# -- the parent's side -----------------------------------------------------
class StackRequest(NamedTuple):
    """One worker to ask: its pid and the fd number of its dump file there."""
    pid: int
    fd: int


def collect(requests: Iterable[StackRequest], signum: int,
            timeout: float) -> dict[int, str]:
    """Each worker's dump of its threads' stacks, ``{pid: text}``.

    Every worker is signalled at once and waited for together: this
    returns within about *timeout* seconds however many there are.  A
    worker that is gone, dies meanwhile or does not answer gets a text that
    says so (starting with ``"no stack:"``).  Opens one descriptor per
    worker and closes it before returning.
    """
    texts: dict[int, str] = {}
    asked: dict[int, int] = {}   # pid -> our descriptor of its file
    try:
        for request in requests:
            opened = _ask(request, signum)
            if isinstance(opened, str):
                texts[request.pid] = opened
            else:
                asked[request.pid] = opened
        deadline = time.monotonic() + timeout
        while asked:
            for pid, fd in list(asked.items()):
                text = _answer(pid, fd, signum)
                if text is not None:
                    texts[pid] = text
                    os.close(asked.pop(pid))
            if not asked or time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS)
        for pid, fd in asked.items():
            texts[pid] = _silent(pid, fd, signum, timeout)
    finally:
        for fd in asked.values():
            os.close(fd)
    return texts


def _ask(request: StackRequest, signum: int) -> int | str:
    """Open *request*'s file, empty it and signal the worker: our descriptor,
    or the text to report if it can't be asked."""
    pid, their_fd = request
    try:
        fd = os.open(f"/proc/{pid}/fd/{their_fd}", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        if _status(pid) is None:
            return f"no stack: worker {pid} is gone (it died or exited)\n"
        return (f"no stack: worker {pid}'s stack file (fd {their_fd}) is closed: the "
                f"worker is leaving the pool, or a task closed it\n")
    except OSError as exc:
        return f"no stack: worker {pid}'s stack file cannot be opened: {exc}\n"
    try:
        refusal = _refusal(pid, their_fd, fd, signum)
        if refusal is not None:
            os.close(fd)
            return refusal
        os.ftruncate(fd, 0)
        if not _still_pending(pid, signum):
            _signal_main_thread(pid, signum)
    except ProcessLookupError:
        os.close(fd)
        return f"no stack: worker {pid} is gone (it died or exited)\n"
    except OSError as exc:
        os.close(fd)
        return f"no stack: worker {pid} cannot be asked: {exc}\n"
    return fd


def _refusal(pid: int, their_fd: int, fd: int, signum: int) -> str | None:
    """Why the worker must not be asked, or None: checked before the file
    is emptied and the signal sent, since both act on whatever *their_fd*
    and *pid* are now.

    * The file must still be the worker's stack file (``_is_stack_file``):
      a task may have put a file of its own at that number (``dup2``, or
      closed it and opened another), and a reused pid has other files (a
      program loading a shared library holds one for a moment: emptying it
      once truncated a system library); such a file must not be emptied,
      nor the signal sent (the worker's handler would dump into it).  The
      check is on the descriptor we hold, so no race can swap the file.
    * The worker must still catch the signal: a task may have given it its
      default action (for a real-time signal: to terminate the process) or
      ignored it (the request would wait out the timeout).
    """
    if not _is_stack_file(fd):
        return (f"no stack: worker {pid}'s fd {their_fd} is not its stack file any "
                f"more (a task closed it or put another file there, or the pid is "
                f"reused); that file is left alone\n")
    status = _status(pid)
    if status is None:
        raise ProcessLookupError(pid)
    if not _sigset(status, "SigCgt") & (1 << (signum - 1)):
        return (f"no stack: worker {pid} does not catch signal {_signal_name(signum)} "
                f"any more: the worker is leaving the pool, or a task reset or ignored "
                f"it (not sent: it would kill the worker, or be lost)\n")
    return None


def _still_pending(pid: int, signum: int) -> bool:
    """Whether an earlier request's signal still waits for *pid*'s main
    thread (it blocks the signal): then it will dump into the file just
    emptied when it unblocks it, and another signal would only queue
    behind (real-time signals queue, against a limit per user shared by
    all their processes, and each would make one more dump)."""
    status = _status(pid)
    return status is not None and bool(_sigset(status, "SigPnd") & (1 << (signum - 1)))


def _is_stack_file(fd: int) -> bool:
    """Whether our descriptor *fd* is a worker's stack file: an unlinked
    in-memory file of ``MEMFD_NAME`` (``/proc`` names one ``/memfd:NAME
    (deleted)``)."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return target.startswith(f"/memfd:{MEMFD_NAME} ") and os.fstat(fd).st_nlink == 0


def _answer(pid: int, fd: int, signum: int) -> str | None:
    """The worker's dump once complete (or what went wrong), else None."""
    size = os.fstat(fd).st_size
    status = _status(pid)
    if status is None or status.get("State", "").startswith(("Z", "X")):
        partial = os.pread(fd, size, 0).decode(errors="replace") if size else ""
        return (f"no stack: worker {pid} died or exited before it finished writing "
                f"its stack\n"
                + partial)
    if not size:
        return None
    bit = 1 << (signum - 1)
    # The main thread's mask and pending set (ShdPnd: the process's, for
    # the fallback to kill()).
    waiting = _sigset(status, "SigBlk") | _sigset(status, "SigPnd") | _sigset(status, "ShdPnd")
    if waiting & bit:
        return None  # still in the handler (or a second request is pending)
    return _trim_below_entry(os.pread(fd, size, 0).decode(errors="replace"))


def _trim_below_entry(dump: str) -> str:
    """*dump* without the frames below ``worker_main`` in the worker's main
    thread: how the process started (under fork, the frames of the thread
    that forked it), never what it is doing."""
    kept, skipping = [], False
    for line in dump.splitlines(keepends=True):
        if skipping and line.strip():
            continue
        skipping = False
        kept.append(line)
        if line.rstrip().endswith(" in worker_main") and "worker.py" in line:
            skipping = True
    return "".join(kept)


def _silent(pid: int, fd: int, signum: int, timeout: float) -> str:
    size = os.fstat(fd).st_size
    partial = os.pread(fd, size, 0).decode(errors="replace") if size else ""
    return (f"no stack: worker {pid} did not answer signal {_signal_name(signum)} "
            f"within {timeout:g} s (it blocks the signal, is stopped, or a task "
            f"installed its own handler for it)\n" + partial)


def _status(pid: int) -> dict[str, str] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _sigset(status: dict[str, str], key: str) -> int:
    return int(status.get(key, "0"), 16)


_tgkill: Any = None   # libc's tgkill, False where there is none; looked up once


def _signal_main_thread(pid: int, signum: int) -> None:
    """Send *signum* to *pid*'s main thread (the one that runs its tasks).

    ``tgkill`` (glibc 2.30) rather than ``kill``: a signal to the process
    may be taken by any of its threads, while ``/proc/<pid>/status`` shows
    the main thread's signal mask, which tells when the dump is complete.
    Falls back to ``kill`` (the main thread takes a signal to the process
    first, unless it is busy with another).
    """
    global _tgkill
    if _tgkill is None:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        _tgkill = getattr(libc, "tgkill", False)
    if not _tgkill:
        os.kill(pid, signum)
        return
    if _tgkill(pid, pid, signum) != 0:
        import ctypes
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))  # ESRCH: ProcessLookupError


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        if hasattr(signal, "SIGRTMIN") and signal.SIGRTMIN <= signum <= signal.SIGRTMAX:
            return f"SIGRTMIN+{signum - signal.SIGRTMIN} ({signum})"
        return str(signum)


# -- what each worker holds and runs --------------------------------------
def worker_stacks(workers: list, table: Any, signum: int,
                  timeout: float, ask: bool = True) -> dict[int, str]:
    """``{pid: text}`` of *workers* (the scheduler's ``WorkerHandle``s): the
    tasks each holds (``describe_work``, from the progress *table*), then
    its dump (``collect``) or why there is none.  Returns within about
    *timeout* seconds.  Without *ask*, no worker is asked (another call
    is asking them) and the texts say so."""
    now = time.monotonic()
    texts: dict[int, str] = {}
    requests = []
    for w in workers:
        pid = w.process.pid
        base = w.slot * m.SLOT_WIDTH
        texts[pid] = describe_work(_snapshot(w.assigned),
                                   list(table[base:base + m.SLOT_WIDTH]), now)
        if w.stacks_fd >= 0 and not ask:
            texts[pid] += ("no stack: another stacks() call is asking the workers "
                           "(not waited for)\n")
        elif w.stacks_fd >= 0:  # it has registered (StacksReady, WorkerReady)
            requests.append(StackRequest(pid, w.stacks_fd))
        elif not w.ready:
            texts[pid] += "no stack: the worker is starting\n"
        elif not signum:
            texts[pid] += f"no stack: stacks are turned off ({ENV_SIGNAL}=0)\n"
        else:
            texts[pid] += "no stack: stacks are not available on this platform\n"
    if requests:
        for pid, dump in collect(requests, signum, timeout).items():
            texts[pid] += dump
    return texts


def _snapshot(chunks: Any) -> list:
    """A copy of a worker's chunks (a deque), from a caller thread while the
    PoolScheduler thread may change them (under the GIL the copy is one C
    loop; without it, a concurrent change shows as a RuntimeError)."""
    for _ in range(100):
        try:
            return list(chunks)
        except RuntimeError:
            continue
    return []


def describe_work(chunks: list, slot: list[float], now: float) -> str:
    """The tasks a worker holds, one line each, from the scheduler's books.

    *chunks*: the ``TaskChunk``s it was given and has not reported, in
    order; *slot*: its progress slot (``messages.SLOT_*``), which says
    which of them is running and, unless its tasks are too fast to be
    tracked, which task.
    """
    if not chunks:
        return "holds no task\n"
    phase, running_id = slot[m.SLOT_PHASE], int(slot[m.SLOT_CHUNK])
    task, started = int(slot[m.SLOT_TASK]), slot[m.SLOT_STARTED]
    lines = []
    for chunk in chunks:
        if phase == m.PHASE_RUNNING and chunk.chunk_id == running_id:
            lines.append(_running(chunk, task, started, now))
        else:
            lines.append(f"holds {_tasks_of(chunk)} (not started)")
    return "".join(line + "\n" for line in lines)


def _running(chunk, task: int, started: float, now: float) -> str:
    if chunk.tracking == m.TRACK_NONE or not 0 <= task < chunk.count:
        return f"running {_tasks_of(chunk)}"
    # STARTED is the task's start with a timeout (TRACK_TIME), else its
    # chunk's.
    since = "" if not started else (
        f" for {now - started:.1f} s" if chunk.tracking == m.TRACK_TIME
        else f", its chunk started {now - started:.1f} s ago")
    return f"running {chunk.describe_task(task)}{since}"


def _tasks_of(chunk) -> str:
    last = chunk.start + chunk.count - 1
    tasks = f"task {chunk.start}" if chunk.count == 1 else f"tasks {chunk.start}..{last}"
    return f"{chunk.func_name} {tasks}"


# -- hang reports ----------------------------------------------------------
class StallWatch:
    """When a pool is stalled long enough for a hang report (``hang_report=``).

    A stall begins when tasks are outstanding and none has finished since;
    it is reported once, however long it lasts, and ends when a task
    finishes (``tasks_finished``), so the next stall is reported again.  An
    idle pool is not stalled.  Kept by the PoolScheduler thread only.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.since: float | None = None   # when the stall began
        self.reported = False

    def tasks_finished(self) -> None:
        self.since = None
        self.reported = False

    def due(self, busy: bool, now: float) -> float | None:
        """How long the stall has lasted if it is to be reported now, else None.

        *busy*: whether tasks are outstanding.  Marks the stall reported.
        """
        if not busy:
            self.tasks_finished()
            return None
        if self.since is None:
            self.since = now
        if self.reported or now - self.since < self.seconds:
            return None
        self.reported = True
        return now - self.since

    def next_timeout(self, now: float) -> float | None:
        """Seconds until a report is due (for the scheduler's wait), or None."""
        if self.since is None or self.reported:
            return None
        return max(0.0, self.since + self.seconds - now)


def hang_report_text(seconds: float, threshold: float, outstanding: int, queued: int,
                     texts: dict[int, str]) -> str:
    """What a hang report writes: a header, then each worker's text."""
    header = (f"polyproc: no task of the pool has finished for {seconds:.1f} s "
              f"({outstanding} outstanding, {queued} of them queued); what each worker "
              f"holds and runs (hang_report={threshold:g}):\n")
    parts = [header]
    for pid, text in texts.items():
        parts.append(f"\n--- worker {pid} ---\n{text}")
    return "".join(parts) + "\n"
