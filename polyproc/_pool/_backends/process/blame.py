"""Who is to blame when a pool worker dies: the decisions, as functions of what is known.

When a worker's sentinel fires without a ``Retiring`` message, the
scheduler (scheduler.py) reads the worker's progress slot and calls
``recover_lost_chunks``, which says what to requeue and which tasks fail;
the words of those failures (``describe_exit``) and of a pool whose
workers cannot start (``describe_startup_failure``) are here too.  Nothing
here touches the scheduler's state, the workers or the sinks: the
decisions can be read, and tested, alone.

Who is to blame when a worker dies.  Every worker writes into its slot of
a shared progress table what it is doing: loading chunk c, running task i
of chunk c since time t, dumping results up to chunk c, idle after chunk c
with its results not sent yet, idle with nothing unsent (see _pool/_backends/process/worker.py).
A worker runs the chunks it holds in dispatch order, so the chunk its slot
names splits them into chunks that *ran* (results unsent), that chunk, and
chunks that *never started*.  When its sentinel fires without a
``Retiring`` message:

* RUNNING task i of chunk c: task i is *charged* (below).  Everything else
  the worker held is requeued uncharged, tasks that had finished but whose
  results were not sent yet included (they run again: results are
  delivered exactly once, but a task may *run* twice).
* LOADING chunk c: if c is one task, it is charged; if several, the culprit
  is one of them but unknown, so they are requeued uncharged as one-task
  chunks, and if it happens again the one task then on the worker is known.
* RUNNING a chunk of microsecond tasks (``TRACK_NONE``): for functions
  whose tasks take under ``FAST_TASK_SECONDS``, recording the index would
  double the cost of each task, so the worker runs the chunk from C without
  it; a death there is handled like LOADING.
* DUMPING, or IDLE after chunk c: the chunks up to c ran and one of them may
  have left the process to die (a result that kills it when pickled, a
  thread a task started).  Each of their tasks is requeued uncharged as an
  *isolated* one-task chunk, which is dispatched alone, so that its results
  are sent alone; an isolated task that is the one suspect of such a death
  again is charged.
* IDLE with nothing unsent (waiting for work; killed between tasks): no
  task it held had started.  Nothing is charged, everything is requeued.
* Killed by the scheduler to cancel a call (Ctrl-C in its caller,
  ``cancel``): nothing is blamed; that call's chunks are dropped, the
  other calls' chunks it held are requeued.

What a retry costs.  ``retries=N`` is the number of re-runs of a task whose
worker died while the death was pinned on it: a *charge* re-runs the task
with one retry fewer, or, with none left, fails it with ``WorkerLostError``
(``TaskTimeoutError`` if the scheduler killed it for its ``timeout``).  No
other limit fails a task: a death that cannot be pinned on one task costs
no task a retry (a worker killed from outside while it waits for work, or
while it holds several suspects).  Nothing is retried for ever all the
same, because every death does one of four things, and only the first
recurs without bound, only while something outside keeps killing workers:

1. charges no task, because none that the worker held had started: the
   tasks it held run again, but the death was not caused by them (a task
   of which the death could be a late effect, such as a thread it left,
   was delivered already and never runs again);
2. splits a chunk of several tasks into one-task chunks, which happens
   once per task;
3. isolates one-task chunks, once per task (an isolated task stays
   isolated, retries included);
4. charges one task, at most N + 1 times per task.

So a task that kills its worker every time fails after N + 1 runs that
were charged, plus at most one run while it was not known to be the
culprit (in a chunk of several, or sending results with others).

Start-up.  A worker that dies before it has reported ready holds no task.
If it was killed (a signal sent to it: SIGKILL from the OOM killer, which
picks the newest, biggest process, SIGTERM, or this scheduler's own kill),
it is a lost worker like any other and is replaced.  If it failed on its
own (an exit code: an import error in the main module, a missing
``__main__`` guard, ``os._exit`` in the initializer; or a crash signal such
as SIGSEGV), a new worker would fail the same way: the pool breaks at once
if no worker was ever ready, else after ``MAX_STARTUP_FAILURES`` in a row,
with a ``ProcessError`` naming the exit code and what it means
(``describe_startup_failure``).  An initializer that raises is reported by
the worker itself and breaks the pool with ``InitializerError``.  Kills
alone break the pool only when no worker can start at all: none ready for
``STARTUP_STALL_SECONDS`` while at least ``MAX_KILLED_STARTS`` were killed
while starting; otherwise the pool would respawn workers for ever while
its callers wait.
"""
from __future__ import annotations

import signal
import time
from typing import NamedTuple

from ...._exceptions import ProcessError, TaskTimeoutError, WorkerLostError
from ... import messages as m
from ...chunks import TaskChunk

__all__ = ["Death", "Recovery", "recover_lost_chunks", "StartupRecord",
           "describe_exit", "describe_startup_failure", "failed_on_its_own",
           "CRASH_SIGNALS"]

MAX_STARTUP_FAILURES = 3    # workers in a row that fail to start on their own
MAX_KILLED_STARTS = 10      # workers in a row killed while starting, none ready,
STARTUP_STALL_SECONDS = 60.0  # ... and none ready for this long: the pool breaks


def describe_exit(exitcode: int | None) -> str:
    """Words for an exit code, naming the likely cause."""
    if exitcode is None:
        return "exited (exit code unknown)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        cause = {
            "SIGKILL": "killed by SIGKILL: the kernel's OOM killer (out of memory) or kill -9",
            "SIGSEGV": "segmentation fault: a crash in C code (an extension module or ctypes)",
            "SIGBUS": "bus error: a crash in C code or a truncated memory-mapped file",
            "SIGABRT": "aborted: a C library called abort()",
            "SIGTERM": "terminated by SIGTERM",
        }.get(name, f"killed by {name}")
        return f"{cause} (exit code {exitcode})"
    return (f"exited with code {exitcode}: os._exit() or a C extension called "
            f"exit() inside the task")


# Signals a process raises on itself when its own code crashes.  Any other
# signal was sent to it: by the kernel's OOM killer, by a person or a
# supervisor, or by this scheduler (terminate, kill).
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                           signal.SIGABRT, signal.SIGSYS, signal.SIGTRAP})


def failed_on_its_own(exitcode: int | None) -> bool:
    """Whether a worker that died while starting did so through its own code.

    An exit (any code: an uncaught exception is 1, ``os._exit(n)`` is n) or
    a crash signal is the worker's own doing, and a new worker would do the
    same.  A signal sent to it, or an unknown exit code, is not.
    """
    if exitcode is None:
        return False
    if exitcode >= 0:
        return True
    return -exitcode in {int(s) for s in CRASH_SIGNALS}


def describe_startup_failure(exitcode: int | None, start_method: str,
                             initializer: str | None = None) -> str:
    """The message of the error that breaks a pool whose workers fail to start."""
    if exitcode is not None and exitcode < 0:
        what = f"crashed: {describe_exit(exitcode)}"
    elif exitcode == 1:
        what = ("exited with code 1, the code of an uncaught exception; the "
                "worker's traceback is on standard error above")
    else:
        what = (f"exited with code {exitcode} (sys.exit() or os._exit() in code it "
                f"ran while starting, or exit() in a C extension)")
    steps = []
    if start_method in ("spawn", "forkserver"):
        steps.append(
            f"imports the main module (under the {start_method} start method it "
            f"must import without error in a new process, and code that creates "
            f"pools or processes must be under if __name__ == '__main__':)")
    if initializer is not None:
        steps.append(f"runs the pool's initializer {initializer}()")
    how = (" then ".join(steps) if steps else
           "runs no code of yours (under fork: only os.register_at_fork handlers)")
    return (f"a pool worker died while starting, before it could run any task: it "
            f"{what}.  While starting, a worker {how}.  A new worker would fail "
            f"the same way, so the pool stops here.")


class Death(NamedTuple):
    """What the scheduler knows about a worker that died holding chunks."""

    phase: float                 # its progress slot: m.PHASE_*
    chunk_id: int                # ... the chunk it names
    task: int                    # ... the task of that chunk it names
    timed_out: tuple[int, int] | None  # (chunk_id, task) the scheduler killed it for
    pid: int | None
    exitcode: int | None


class Recovery(NamedTuple):
    """What to do about the chunks a dead worker held."""

    requeue: list[TaskChunk]     # to run again, in this order, before new work
    failures: list[tuple[TaskChunk, int, BaseException]]  # (chunk, task, error)
    retried: list[tuple[TaskChunk, int, TaskChunk]]  # (chunk, task, its retry chunk)


def recover_lost_chunks(lost: list[TaskChunk], death: Death) -> Recovery:
    """Blame, isolate or requeue what a dead worker held (module docstring).

    *lost* is in dispatch order, which is the order the worker runs
    chunks in: the chunk its slot names splits it into chunks that ran
    before it (their results unsent), that chunk, and chunks it never
    started.  The chunks in *lost* are not released here (the caller does,
    once the failures are delivered).
    """
    failures: list[tuple[TaskChunk, int, BaseException]] = []
    retried: list[tuple[TaskChunk, int, TaskChunk]] = []
    index = next((i for i, c in enumerate(lost) if c.chunk_id == death.chunk_id), None)
    requeue: list[TaskChunk] = []
    if index is None:
        # Waiting for work (or past the end of what it held): no task
        # it held had started, and none is charged.
        requeue += [c.subchunk(0, c.count) for c in lost]
        return Recovery(requeue, failures, retried)
    current, ran, rest = lost[index], lost[:index], lost[index + 1:]
    phase = death.phase
    if phase == m.PHASE_RUNNING and current.tracking == m.TRACK_NONE:
        phase = m.PHASE_LOADING  # which task is unknown: isolate them all
    if phase == m.PHASE_RUNNING:
        requeue += [c.subchunk(0, c.count) for c in ran]
        requeue += _blame(current, death.task, death, failures, retried)
    elif phase == m.PHASE_LOADING:
        requeue += [c.subchunk(0, c.count) for c in ran]
        if current.count == 1:
            requeue += _blame(current, 0, death, failures, retried)
        else:
            requeue += [current.subchunk(i, i + 1) for i in range(current.count)]
    else:
        # DUMPING, or IDLE after `current` ran: every chunk up to it
        # ran and its results were not sent; one of them may have
        # left the process to die (a result that kills it when
        # pickled, a thread of a task).
        requeue += _isolate_or_blame(ran + [current], death, failures, retried)
    requeue += [c.subchunk(0, c.count) for c in rest]
    return Recovery(requeue, failures, retried)


def _isolate_or_blame(suspects: list[TaskChunk], death: Death,
                      failures: list, retried: list) -> list[TaskChunk]:
    """Chunks that ran before the worker died (results unsent): which one?

    A task already sent alone (isolated) is the one: it is charged.
    Otherwise each task runs again alone, and no retry is used: the next
    death among them is pinned on one.
    """
    if len(suspects) == 1 and suspects[0].count == 1 and suspects[0].isolated:
        return _blame(suspects[0], 0, death, failures, retried)
    isolated = []
    for c in suspects:
        for i in range(c.count):
            single = c.subchunk(i, i + 1)
            single.isolated = True
            isolated.append(single)
    return isolated


def _blame(chunk: TaskChunk, task: int, death: Death, failures: list,
           retried: list) -> list[TaskChunk]:
    """Charge task *task* of *chunk*: a retry (also appended to *retried*),
    or a failure appended to *failures*; return the rest of the chunk to
    requeue."""
    requeue = []
    if task > 0:
        requeue.append(chunk.subchunk(0, task))
    if death.timed_out == (chunk.chunk_id, task):
        failures.append((chunk, task, TaskTimeoutError(
            f"task {chunk.describe_task(task)} ran longer than its timeout of "
            f"{chunk.timeout} s; its worker (pid {death.pid}) was killed "
            f"and replaced", chunk.timeout, chunk.describe_task(task))))
    elif chunk.retries > 0:
        retry = chunk.subchunk(task, task + 1, retries=chunk.retries - 1)
        retry.isolated = chunk.isolated
        requeue.append(retry)
        retried.append((chunk, task, retry))
    else:
        failures.append((chunk, task, WorkerLostError(
            f"the worker process (pid {death.pid}) running task "
            f"{chunk.describe_task(task)} {describe_exit(death.exitcode)}. The pool "
            f"replaced it and goes on; pass retries=N to run such a task "
            f"again on another worker.",
            death.pid, death.exitcode, chunk.describe_task(task))))
    if task + 1 < chunk.count:
        requeue.append(chunk.subchunk(task + 1, chunk.count))
    return requeue


class StartupRecord:
    """How a pool's workers fared while starting: whether the pool must break.

    See "Start-up" in the module docstring.  The limits are read at each
    death (module constants), so that a test can lower them.
    """

    def __init__(self) -> None:
        self.failures = 0          # in a row, failed on their own
        self.killed = 0            # in a row, killed while starting
        self.last_ready = time.monotonic()
        self.ever_ready = False

    def worker_ready(self) -> None:
        self.ever_ready = True
        self.failures = 0
        self.killed = 0
        self.last_ready = time.monotonic()

    def worker_died(self, exitcode: int | None, others_ready: bool, start_method: str,
                    initializer: str | None) -> BaseException | None:
        """A worker died before it was ready: the error that breaks the pool, or None.

        Killed (by a signal sent to it, which is also how the scheduler
        kills), it is a lost worker like any other, replaced at the next
        step.  Failed on its own, it would fail the same way forever.
        """
        if not failed_on_its_own(exitcode):
            return self._killed_while_starting(exitcode, others_ready)
        self.failures += 1
        if not self.ever_ready or self.failures >= MAX_STARTUP_FAILURES:
            return ProcessError(describe_startup_failure(exitcode, start_method, initializer))
        return None

    def _killed_while_starting(self, exitcode: int | None,
                               others_ready: bool) -> BaseException | None:
        """A lost worker; the pool breaks only when no worker can start at all.

        That is: none is ready now, none has been for
        ``STARTUP_STALL_SECONDS``, and at least ``MAX_KILLED_STARTS`` were
        killed while starting meanwhile (the OOM killer kills every new
        worker of a main module too big for the memory left).  Without this
        the pool would respawn workers for ever while its callers wait.
        """
        if others_ready:
            return None  # the pool makes progress meanwhile
        self.killed += 1
        stalled = time.monotonic() - self.last_ready
        if self.killed < MAX_KILLED_STARTS or stalled < STARTUP_STALL_SECONDS:
            return None
        return ProcessError(
            f"no pool worker could start for {stalled:.0f} s: {self.killed} "
            f"in a row were killed while starting, the last one "
            f"{describe_exit(exitcode)}.  Something kills every new worker: the "
            f"OOM killer, if importing the main module or running the initializer "
            f"takes more memory than is free, or a supervisor that signals new "
            f"processes.  Use fewer processes or free memory, then create a new "
            f"pool.")
