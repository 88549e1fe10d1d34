"""The local process backend of a Pool: worker processes and the thread that runs them.

Data flow of a task (the same diagram is in ARCHITECTURE.md)::

  caller thread            | PoolScheduler thread             | worker processes
  (Pool API, _pool.py)     | (ProcessScheduler._run)          | (_worker.py)
                           |                                  |
  map/apply_async/imap     |                                  |
   -> TaskChunk(s),        |                                  |
      args pickled here  --+-> pending deque ---+             |
      (an error fails      |   (+ wake-up pipe) |             |
       that task)          |                    v             |
                           |   dispatch_chunks: batches of    |
                           |   chunks -> Dispatch message ----+-> own duplex pipe
                           |   to a ready worker              |   run tasks, write
                           |                                  |   progress slot
                           |   receive_results <--------------+-- Results(...)
  result.get()/next() <----+-- sink.deliver(start, values,    |
  (ApplyResult, MapResult, |      errors)                     |
   IMapIterator)           |                                  |
                           |   on_worker_exit (sentinel) -----+-- died / retired
                           |   -> blame one task, requeue     |
                           |      the rest, spawn replacement |

One thread does all the bookkeeping (like ``concurrent.futures``' executor
manager thread, and unlike the stdlib Pool's three handler threads), so the
state below needs no locks: caller threads only append to ``_pending`` (a
deque, whose append is atomic) and poke the wake-up pipe.  The same thread
fires the events of the pool's instruments (_instruments.py), each behind
one ``if self._instruments:``, so a pool without them builds no event.

Why each worker has its *own* pipe (the stdlib shares one queue among all
workers): a worker that dies while holding a shared queue's lock, or half
way through writing a message, wedges everyone (gh-66587, pebble #163).
With a pipe each, a dead worker can only break its own pipe, and the
scheduler always knows which tasks were on which worker.

Who is to blame when a worker dies.  Every worker writes into its slot of
a shared progress table what it is doing: loading chunk c, running task i
of chunk c since time t, dumping results up to chunk c, idle after chunk c
with its results not sent yet, idle with nothing unsent (see _worker.py).
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

import collections
import contextlib
import math
import os
import signal
import threading
import time
from multiprocessing import connection as mp_connection
from typing import Callable

from . import _messages as m
from . import _serialization, _shm_pool
from ._exceptions import (InitializerError, ProcessError, SerializationError,
                          TaskTimeoutError, UnloadableError, WorkerLostError)
from ._fork_template import ForkTemplate
from ._instruments import Instruments
from ._remote_errors import rebuild_exception
from ._tasks import TaskChunk
from ._worker import WorkerConfig, worker_main

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"

TARGET_BATCH_SECONDS = 0.02   # work per Dispatch message once task times are known
MAX_BATCH_CHUNKS = 256
PREFETCH_BYTES = 32 * 1024     # a second Dispatch may wait in a busy worker's pipe if smaller
PREFETCH_AHEAD_SECONDS = 0.1   # ... and if the work ahead of it is known to end sooner
MAX_STARTUP_FAILURES = 3    # workers in a row that fail to start on their own
MAX_KILLED_STARTS = 10      # workers in a row killed while starting, none ready,
STARTUP_STALL_SECONDS = 60.0  # ... and none ready for this long: the pool breaks
TIMEOUT_POLL_SECONDS = 0.05
FAST_TASK_SECONDS = 20e-6      # below this, a task's progress is not recorded
SHUTDOWN_GRACE_SECONDS = 0.5
MAX_TIMED_FUNCS = 1024         # functions whose task times are remembered
MAX_TIMING_KEY_BYTES = 4096    # larger pickled functions are keyed by a hash


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


def _failed_on_its_own(exitcode: int | None) -> bool:
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


class WorkerHandle:
    """The scheduler's view of one worker process."""

    __slots__ = ("process", "conn", "slot", "ready", "assigned", "dispatch_ends",
                 "retiring", "shutdown_sent", "timed_out", "chunks_given",
                 "cancelled_sinks", "spawned", "replaces")

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


class ProcessScheduler:
    """Runs TaskChunks on a set of local worker processes.

    The backend interface the Pool API layer uses (_pool.py): ``size``,
    ``submit(chunks)``, ``task_seconds()``, ``add_feeder()``/
    ``remove_feeder()``, ``cancel(sink)``, ``close()``, ``terminate()``,
    ``join(timeout)``.  Events go to *instruments* (_instruments.py).
    """

    def __init__(self, ctx, processes: int, initializer, initargs,
                 maxtasksperchild: int | None, max_memory_per_child: int | None,
                 abort_all: Callable[[BaseException], None],
                 instruments: Instruments | None = None):
        self.size = processes
        self._instruments = Instruments() if instruments is None else instruments
        # (time, chunks) submitted while instrumented, announced by the
        # PoolScheduler thread (_announce_queued): events come from it only.
        self._queued_at: collections.deque = collections.deque()
        self._slot_pids: dict[int, int] = {}  # slot -> pid of its last worker
        self._ctx = ctx
        self._abort_all = abort_all
        init_blob = (None if initializer is None
                     else _serialization.dumps_function(initializer))
        self._initializer_name = (None if initializer is None else
                                  getattr(initializer, "__qualname__", repr(initializer)))
        self._config = WorkerConfig(init_blob,
                                    _serialization.dumps(tuple(initargs), "initargs"),
                                    maxtasksperchild, max_memory_per_child)
        self._maxtasks = maxtasksperchild
        self._table = ctx.RawArray("d", processes * m.SLOT_WIDTH)
        self._pending: collections.deque[TaskChunk] = collections.deque()
        self._requeued: collections.deque[TaskChunk] = collections.deque()
        self._cancel_requests: collections.deque = collections.deque()  # of sinks
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_w, False)
        self._wakeup_armed = False
        self._workers: dict[int, WorkerHandle] = {}
        self._by_sentinel: dict[int, WorkerHandle] = {}
        self.state = RUN
        self.broken: BaseException | None = None
        # Mean seconds per task of each function, a moving average over its
        # chunks, keyed by _timing_key(its pickled bytes).
        self._task_seconds_by_func: dict[bytes | tuple[int, int], float] = {}
        self._feeders = 0
        self._feeders_lock = threading.Lock()
        self._startup_failures = 0
        self._killed_starts = 0
        self._last_ready = time.monotonic()
        self._ever_ready = False
        self._worker_counter = 0
        self._template = self._start_template()
        try:
            for slot in range(processes):
                self._spawn_worker(slot, in_caller_thread=True)
        except BaseException:
            if self._template is not None:
                self._template.close()
            raise
        self._thread = threading.Thread(target=self._run, name="PoolScheduler",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------
    # Called from caller threads
    # ------------------------------------------------------------------
    def submit(self, chunks: list[TaskChunk]) -> None:
        """Queue chunks for dispatch (never blocks)."""
        if self.broken is not None:
            for chunk in chunks:
                _fail_chunk(chunk, self.broken)
            return
        if self._instruments:  # before the chunks can be dispatched
            self._queued_at.append((time.monotonic(), chunks))
        self._pending.extend(chunks)
        self._wake()

    def task_seconds(self, func) -> float | None:
        return self._task_seconds_by_func.get(_timing_key(func))

    def add_feeder(self) -> None:
        with self._feeders_lock:
            self._feeders += 1

    def remove_feeder(self) -> None:
        with self._feeders_lock:
            self._feeders -= 1
        self._wake()

    def cancel(self, sink) -> None:
        """Stop running the chunks of *sink*'s call (never blocks).

        The PoolScheduler thread drops its queued chunks and kills the
        workers that hold any of them (``_apply_cancels``); they are replaced.
        """
        self._cancel_requests.append(sink)
        self._wake(force=True)

    def close(self) -> None:
        if self.state == RUN:
            self.state = CLOSE
        self._wake()

    def terminate(self) -> None:
        self.state = TERMINATE
        self._wake(force=True)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def join(self, timeout: float | None = None) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _wake(self, force: bool = False) -> None:
        # One byte per sleep of the scheduler, not one per submission: the
        # flag is cleared by the scheduler *before* it drains the deque, so
        # a submission racing with the drain always writes.
        if self._wakeup_armed and not force:
            return
        self._wakeup_armed = True
        try:
            os.write(self._wakeup_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake-up is pending) or closed

    # ------------------------------------------------------------------
    # The PoolScheduler thread
    # ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self.state != TERMINATE:
                self._wakeup_armed = False
                self._apply_cancels()
                self._dispatch_chunks()
                if self.state == CLOSE and self._all_done():
                    self._shutdown_workers()
                    return
                self._wait_and_handle_events()
                self._enforce_timeouts()
                self._replace_workers()
        except BaseException as exc:  # a bug here must not hang callers
            self.broken = ProcessError(f"polyproc pool scheduler crashed: {exc!r}")
            self.broken.__cause__ = exc
            self._abort_all(self.broken)
            raise
        finally:
            if self.state == TERMINATE or self.broken is not None:
                self._kill_workers()
                self._abort_all(ProcessError("the pool was terminated"))
            self._close_resources()

    def _all_done(self) -> bool:
        return (not self._pending and not self._requeued and self._feeders == 0
                and all(not w.assigned for w in self._workers.values()))

    def _wait_and_handle_events(self) -> None:
        handles: dict = {self._wakeup_r: None}
        for w in self._workers.values():
            handles[w.conn] = w
            handles[w.process.sentinel] = w
        ready = mp_connection.wait(list(handles), self._next_timeout())
        exits = []
        for obj in ready:
            if obj == self._wakeup_r and not isinstance(obj, mp_connection.Connection):
                os.read(self._wakeup_r, 4096)
            elif isinstance(obj, mp_connection.Connection):
                self._receive_messages(handles[obj])
            else:
                exits.append(handles[obj])
        for w in exits:
            self._on_worker_exit(w)

    def _next_timeout(self) -> float | None:
        for w in self._workers.values():
            if any(c.timeout is not None for c in w.assigned):
                return TIMEOUT_POLL_SECONDS
        return None

    # -- dispatch -------------------------------------------------------
    def _announce_queued(self) -> None:
        """Fire ``chunk_queued`` for the chunks callers submitted since the last call."""
        while self._queued_at:
            queued_at, chunks = self._queued_at.popleft()
            self._instruments.chunks_queued(chunks, queued_at, requeued=False)

    def _dispatch_chunks(self) -> None:
        if self._queued_at:
            self._announce_queued()
        if self.broken is not None:
            self._fail_queued(self.broken)
            return
        workers = [w for w in self._workers.values()
                   if w.ready and not w.retiring and not w.shutdown_sent]
        # Idle workers first, then the prefetches: a chunk prefetched by a
        # busy worker waits behind its running task, however long it runs
        # (for ever, if it hangs), while an idle worker could start it now.
        for w in workers:
            if not (self._pending or self._requeued):
                return
            if not w.assigned and self._may_send(w):
                self._send_dispatch(w)
        for w in workers:
            if not (self._pending or self._requeued):
                return
            while (self._pending or self._requeued) and self._may_send(w):
                self._send_dispatch(w)

    def _may_send(self, w: WorkerHandle) -> bool:
        if self._maxtasks is not None and w.chunks_given >= self._maxtasks:
            return False
        if not w.assigned:
            return True
        if len(w.dispatch_ends) >= 2:
            return False
        head = self._requeued[0] if self._requeued else self._pending[0]
        return len(head.payload) < PREFETCH_BYTES and self._ends_soon(w)

    def _ends_soon(self, w: WorkerHandle) -> bool:
        """Whether the work *w* holds is known to take under ``PREFETCH_AHEAD_SECONDS``.

        Only then is more work prefetched onto it: a chunk prefetched
        behind a long task, or one of unknown length (a first call; a task
        that hangs), waits there while another worker could run it.
        """
        timings = self._task_seconds_by_func
        seconds = 0.0
        for c in w.assigned:
            per_task = timings.get(c.func)
            if per_task is None:
                return False
            seconds += per_task * c.count
        return seconds < PREFETCH_AHEAD_SECONDS

    def _send_dispatch(self, w: WorkerHandle) -> None:
        """Send *w* the next batch of queued chunks in one ``Dispatch`` message.

        A batch holds about ``TARGET_BATCH_SECONDS`` of estimated work (from
        the measured time per task of each chunk's function), and never
        more than a quarter of the queue per ready worker, so that the tail
        of a call stays balanced across workers.  A function not measured
        yet counts as a full batch, so its first chunk goes alone: a cost
        learnt from one function must not size batches of another (trivial
        warm-up tasks followed by a map of slow ones would otherwise pile
        the map onto one worker).

        Each chunk's ``tracking`` is chosen here too: how closely the
        worker records its progress (see ``_messages.TRACK_*``).
        """
        queued = len(self._pending) + len(self._requeued)
        ready = sum(1 for x in self._workers.values() if x.ready) or 1
        limit = min(MAX_BATCH_CHUNKS, max(1, queued // (4 * ready)))
        if self._maxtasks is not None:
            limit = min(limit, self._maxtasks - w.chunks_given)
        timings = self._task_seconds_by_func
        requeued, pending = self._requeued, self._pending
        batch: list[TaskChunk] = []
        size = 0
        seconds = 0.0
        while len(batch) < limit and (requeued or pending):
            head = requeued[0] if requeued else pending[0]
            func = head.func  # _timing_key inlined: once per chunk
            per_task = timings.get(func if len(func) <= MAX_TIMING_KEY_BYTES
                                   else _timing_key(func))
            estimate = TARGET_BATCH_SECONDS if per_task is None else per_task * head.count
            if batch and seconds + estimate > TARGET_BATCH_SECONDS:
                break
            if head.isolated and batch:
                break  # a suspect goes alone (see "What a retry costs")
            chunk = requeued.popleft() if requeued else pending.popleft()
            if chunk.timeout is not None:
                chunk.tracking = m.TRACK_TIME
            elif (per_task is not None and per_task < FAST_TASK_SECONDS
                  and chunk.count > 1 and chunk.call != m.CALL_APPLY):
                chunk.tracking = m.TRACK_NONE
            else:
                chunk.tracking = m.TRACK_INDEX
            batch.append(chunk)
            size += len(chunk.payload)
            seconds += estimate
            if chunk.isolated or (w.assigned and size >= PREFETCH_BYTES):
                break
        w.assigned.extend(batch)
        w.dispatch_ends.append(batch[-1].chunk_id)
        w.chunks_given += len(batch)
        message = m.Dispatch([c.chunk_id for c in batch], [c.func for c in batch],
                             [c.payload for c in batch], [c.call for c in batch],
                             [c.tracking for c in batch])
        data = _serialization.dumps(message, "dispatch")
        if self._instruments:
            self._announce_queued()  # submitted since _dispatch_chunks began
            self._instruments.chunks_dispatched(w.process.pid, batch, time.monotonic())
        try:
            w.conn.send_bytes(data)
        except OSError:
            pass  # the worker died: its sentinel fires and on_worker_exit requeues

    def _fail_queued(self, exc: BaseException) -> None:
        if self._queued_at:
            self._announce_queued()
        while self._requeued:
            _fail_chunk(self._requeued.popleft(), exc, self._instruments)
        while self._pending:
            _fail_chunk(self._pending.popleft(), exc, self._instruments)

    # -- results --------------------------------------------------------
    def _receive_messages(self, w: WorkerHandle) -> None:
        conn = w.conn
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return  # dying: the sentinel will tell
            last_chunk_id, body = m.unframe(data)
            try:
                message = _serialization.loads(body, "results")
            except BaseException as exc:
                # Unpickling runs the results' own code (__reduce__ callables,
                # __setstate__), which may raise anything, even SystemExit or
                # KeyboardInterrupt: it is those tasks' error, and this thread
                # (which signals never interrupt) goes on.
                self._on_unloadable_message(w, last_chunk_id, exc)
            else:
                if self._instruments and isinstance(message, m.Results):
                    self._instruments.results_received(
                        w.process.pid, message, len(data), *m.frame_dump_times(data),
                        time.monotonic())
                self._on_message(w, message)
            try:
                if not conn.poll(0):
                    return
            except (EOFError, OSError):
                return

    def _on_unloadable_message(self, w: WorkerHandle, last_chunk_id: int,
                               exc: BaseException) -> None:
        """A message from *w* could not be unpickled here: fail what it carried.

        Each task it carried fails with a ``SerializationError`` whose cause
        is what unpickling raised (``loads`` wraps an ``Exception``; any other
        ``BaseException`` arrives as it is).
        """
        cause = exc.__cause__ if isinstance(exc, SerializationError) else exc
        if not any(c.chunk_id == last_chunk_id for c in w.assigned):
            # Not a Results message (or a corrupt frame): the worker can't be
            # trusted any more; its death hands its chunks to the usual path.
            w.process.kill()
            return
        while w.assigned:
            chunk = w.assigned.popleft()
            if w.dispatch_ends and w.dispatch_ends[0] == chunk.chunk_id:
                w.dispatch_ends.popleft()
            error = UnloadableError(
                f"the results of {chunk.describe_task(0)} and the other tasks sent "
                f"with it could not be unpickled in the parent: {cause!r}. "
                f"Results must be of a class importable in the parent and must "
                f"unpickle cleanly.")
            error.__cause__ = cause
            _fail_chunk(chunk, error, self._instruments)
            if chunk.chunk_id == last_chunk_id:
                return

    def _on_message(self, w: WorkerHandle, msg) -> None:
        if isinstance(msg, m.Results):
            self._on_results(w, msg)
        elif isinstance(msg, m.WorkerReady):
            w.ready = True
            self._ever_ready = True
            self._startup_failures = 0
            self._killed_starts = 0
            self._last_ready = time.monotonic()
            if self._instruments:
                self._instruments.worker_started(w, msg.entered, msg.ready,
                                                 self._last_ready)
        elif isinstance(msg, m.Retiring):
            w.retiring = True
        elif isinstance(msg, m.InitializerFailed):
            cause = rebuild_exception(msg.error)
            error = InitializerError(
                f"the pool's initializer {self._initializer_name}() raised "
                f"{type(cause).__name__}: {cause}; the pool cannot run tasks. "
                "Fix the initializer, then create a new pool.")
            error.__cause__ = cause
            self._break(error)

    def _on_results(self, w: WorkerHandle, results: m.Results) -> None:
        """Deliver each finished chunk's outcomes; results come in dispatch order."""
        assigned, dispatch_ends = w.assigned, w.dispatch_ends
        all_errors = results.errors
        timing_func = None
        timing_seconds = 0.0
        timing_tasks = 0
        instruments = self._instruments
        now = time.monotonic() if instruments else 0.0
        for index, (chunk_id, values, seconds) in enumerate(
                zip(results.chunk_ids, results.values, results.seconds)):
            chunk = assigned.popleft()
            assert chunk.chunk_id == chunk_id, "results arrive in dispatch order"
            if dispatch_ends and dispatch_ends[0] == chunk_id:
                dispatch_ends.popleft()
            if chunk.func is not timing_func:
                if timing_tasks:
                    self._learn_timing(timing_func, timing_seconds, timing_tasks)
                timing_func, timing_seconds, timing_tasks = chunk.func, 0.0, 0
            timing_seconds += seconds
            timing_tasks += len(values)
            errors = all_errors.get(index) if all_errors else None
            if errors:
                if -1 in errors:  # the chunk could not even be loaded
                    exc = rebuild_exception(errors[-1])
                    values = [None] * chunk.count
                    errors = dict.fromkeys(range(chunk.count), exc)
                else:
                    errors = {i: rebuild_exception(p) for i, p in errors.items()}
            else:
                errors = {}
            if instruments:
                instruments.chunk_finished(w.process.pid, chunk, results, index,
                                           values, errors, now)
            chunk.sink.deliver(chunk.start, values, errors)
            if len(values) < chunk.count:
                # The worker retired half-way through this chunk: the rest
                # of it never started.
                self._requeue([chunk.subchunk(len(values), chunk.count)])
            chunk.release()
        if timing_tasks:
            self._learn_timing(timing_func, timing_seconds, timing_tasks)

    def _learn_timing(self, func: bytes, seconds: float, tasks: int) -> None:
        """Fold a measurement into *func*'s moving average of seconds per task."""
        per_task = seconds / tasks
        timings = self._task_seconds_by_func
        key = _timing_key(func)
        known = timings.get(key)
        if known is None:
            if len(timings) > MAX_TIMED_FUNCS:
                timings.clear()
            timings[key] = per_task
        else:
            timings[key] = known + 0.3 * (per_task - known)

    # -- failures -------------------------------------------------------
    def _on_worker_exit(self, w: WorkerHandle) -> None:
        self._receive_messages(w)   # results it sent before it died count
        w.process.join(1.0)
        exitcode = w.process.exitcode
        del self._workers[w.slot]
        w.conn.close()
        # Its results still in shared memory that were not in the pipe
        # are lost: let the session's tracker remove them now.
        _shm_pool.drained(w.process.pid)
        lost = list(w.assigned)
        w.assigned.clear()
        if self._instruments:
            self._instruments.worker_exited(w, exitcode, lost, self.state == TERMINATE,
                                            time.monotonic())
        if not w.ready and self.broken is None and self.state != TERMINATE:
            self._on_death_while_starting(exitcode)
        if not lost:
            return
        if w.retiring or w.shutdown_sent or w.cancelled_sinks:
            # Not a failure: nothing is blamed.  A worker killed to cancel
            # a call gives back the other calls' chunks, which run again.
            self._requeue([c.subchunk(0, c.count) for c in lost
                           if c.sink not in w.cancelled_sinks])
            for c in lost:
                c.release()
            return
        self._recover_lost_chunks(w, lost, exitcode)

    # -- cancellation (Ctrl-C in a caller) ---------------------------------
    def _apply_cancels(self) -> None:
        """Drop the queued chunks of cancelled calls; kill the workers holding theirs.

        A killed worker may also hold chunks of other calls: they go back
        to the queue (``_on_worker_exit``) and run again on another worker,
        so no other call loses or fails a task.  The worker is replaced.
        """
        if not self._cancel_requests:
            return
        sinks = set()
        while self._cancel_requests:
            sinks.add(self._cancel_requests.popleft())
        _drop_chunks_of(self._pending, sinks)
        _drop_chunks_of(self._requeued, sinks)
        for w in self._workers.values():
            if not any(c.sink in sinks for c in w.assigned):
                continue
            w.cancelled_sinks = w.cancelled_sinks | sinks
            try:
                w.process.kill()
            except (OSError, ValueError):
                pass

    def _on_death_while_starting(self, exitcode: int | None) -> None:
        """A worker died before it was ready (it holds no task): go on, or break.

        See "Start-up" in the module docstring.  Killed (by a signal sent
        to it, which is also how this scheduler kills), it is a lost worker
        like any other, replaced at the next step.  Failed on its own, it
        would fail the same way forever: the pool breaks.
        """
        if not _failed_on_its_own(exitcode):
            self._on_killed_while_starting(exitcode)
            return
        self._startup_failures += 1
        if not self._ever_ready or self._startup_failures >= MAX_STARTUP_FAILURES:
            self._break(ProcessError(describe_startup_failure(
                exitcode, self._ctx.get_start_method(), self._initializer_name)))

    def _on_killed_while_starting(self, exitcode: int | None) -> None:
        """A lost worker; the pool breaks only when no worker can start at all.

        That is: none is ready now, none has been for
        ``STARTUP_STALL_SECONDS``, and at least ``MAX_KILLED_STARTS`` were
        killed while starting meanwhile (the OOM killer kills every new
        worker of a main module too big for the memory left).  Without this
        the pool would respawn workers for ever while its callers wait.
        """
        if any(x.ready for x in self._workers.values()):
            return  # the pool makes progress meanwhile
        self._killed_starts += 1
        stalled = time.monotonic() - self._last_ready
        if self._killed_starts < MAX_KILLED_STARTS or stalled < STARTUP_STALL_SECONDS:
            return
        self._break(ProcessError(
            f"no pool worker could start for {stalled:.0f} s: {self._killed_starts} "
            f"in a row were killed while starting, the last one "
            f"{describe_exit(exitcode)}.  Something kills every new worker: the "
            f"OOM killer, if importing the main module or running the initializer "
            f"takes more memory than is free, or a supervisor that signals new "
            f"processes.  Use fewer processes or free memory, then create a new "
            f"pool."))

    def _recover_lost_chunks(self, w: WorkerHandle, lost: list[TaskChunk],
                             exitcode: int | None) -> None:
        """Blame, isolate or requeue what a dead worker held (module docstring).

        *lost* is in dispatch order, which is the order the worker runs
        chunks in: the chunk its slot names splits it into chunks that ran
        before it (their results unsent), that chunk, and chunks it never
        started.
        """
        base = w.slot * m.SLOT_WIDTH
        phase = self._table[base + m.SLOT_PHASE]
        chunk_id = int(self._table[base + m.SLOT_CHUNK])
        task = int(self._table[base + m.SLOT_TASK])
        index = next((i for i, c in enumerate(lost) if c.chunk_id == chunk_id), None)
        requeue: list[TaskChunk] = []
        if index is None:
            # Waiting for work (or past the end of what it held): no task
            # it held had started, and none is charged.
            requeue += [c.subchunk(0, c.count) for c in lost]
        else:
            current, ran, rest = lost[index], lost[:index], lost[index + 1:]
            if phase == m.PHASE_RUNNING and current.tracking == m.TRACK_NONE:
                phase = m.PHASE_LOADING  # which task is unknown: isolate them all
            if phase == m.PHASE_RUNNING:
                requeue += [c.subchunk(0, c.count) for c in ran]
                requeue += self._blame(w, current, task, exitcode)
            elif phase == m.PHASE_LOADING:
                requeue += [c.subchunk(0, c.count) for c in ran]
                if current.count == 1:
                    requeue += self._blame(w, current, 0, exitcode)
                else:
                    requeue += [current.subchunk(i, i + 1) for i in range(current.count)]
            else:
                # DUMPING, or IDLE after `current` ran: every chunk up to it
                # ran and its results were not sent; one of them may have
                # left the process to die (a result that kills it when
                # pickled, a thread of a task).
                requeue += self._isolate_or_blame(w, ran + [current], exitcode)
            requeue += [c.subchunk(0, c.count) for c in rest]
        for c in lost:
            c.release()
        self._requeue(requeue)

    def _isolate_or_blame(self, w: WorkerHandle, suspects: list[TaskChunk],
                          exitcode: int | None) -> list[TaskChunk]:
        """Chunks that ran before the worker died (results unsent): which one?

        A task already sent alone (isolated) is the one: it is charged.
        Otherwise each task runs again alone, and no retry is used: the next
        death among them is pinned on one.
        """
        if len(suspects) == 1 and suspects[0].count == 1 and suspects[0].isolated:
            return self._blame(w, suspects[0], 0, exitcode)
        isolated = []
        for c in suspects:
            for i in range(c.count):
                single = c.subchunk(i, i + 1)
                single.isolated = True
                isolated.append(single)
        return isolated

    def _blame(self, w: WorkerHandle, chunk: TaskChunk, task: int,
               exitcode: int | None) -> list[TaskChunk]:
        """Fail (or retry) task *task* of *chunk*; return the rest to requeue."""
        requeue = []
        if task > 0:
            requeue.append(chunk.subchunk(0, task))
        timed_out = w.timed_out == (chunk.chunk_id, task)
        exc: BaseException | None = None
        retry = None
        if timed_out:
            exc = TaskTimeoutError(
                f"task {chunk.describe_task(task)} ran longer than its timeout of "
                f"{chunk.timeout} s; its worker (pid {w.process.pid}) was killed "
                f"and replaced", chunk.timeout, chunk.describe_task(task))
        elif chunk.retries > 0:
            retry = chunk.subchunk(task, task + 1, retries=chunk.retries - 1)
            retry.isolated = chunk.isolated
            requeue.append(retry)
        else:
            exc = WorkerLostError(
                f"the worker process (pid {w.process.pid}) running task "
                f"{chunk.describe_task(task)} {describe_exit(exitcode)}. The pool "
                f"replaced it and goes on; pass retries=N to run such a task "
                f"again on another worker.",
                w.process.pid, exitcode, chunk.describe_task(task))
        if self._instruments:
            self._instruments.task_blamed(w.process.pid, chunk, task, exc, retry,
                                          time.monotonic())
        if exc is not None:
            _deliver(chunk, task, [None], {0: exc})
        if task + 1 < chunk.count:
            requeue.append(chunk.subchunk(task + 1, chunk.count))
        return requeue

    def _requeue(self, chunks: list[TaskChunk]) -> None:
        # Requeued work goes before new work, in its original order.
        self._requeued.extendleft(reversed(chunks))
        if self._instruments:
            self._instruments.chunks_queued(chunks, time.monotonic(), requeued=True)

    def _break(self, error: BaseException) -> None:
        if self.broken is None:
            self.broken = error
        for w in self._workers.values():
            for c in w.assigned:
                _fail_chunk(c, error, self._instruments)
            w.assigned.clear()
        self._fail_queued(error)
        self._abort_all(error)

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        table = self._table
        for w in self._workers.values():
            if w.timed_out is not None or not w.assigned:
                continue
            base = w.slot * m.SLOT_WIDTH
            if table[base + m.SLOT_PHASE] != m.PHASE_RUNNING:
                continue
            chunk_id = int(table[base + m.SLOT_CHUNK])
            task = int(table[base + m.SLOT_TASK])
            started = table[base + m.SLOT_STARTED]
            chunk = next((c for c in w.assigned if c.chunk_id == chunk_id), None)
            if chunk is None or chunk.timeout is None:
                continue
            if now - started > chunk.timeout:
                w.timed_out = (chunk_id, task)
                if self._instruments:
                    self._instruments.task_timed_out(w.process.pid, chunk, task,
                                                     started, now)
                try:
                    w.process.kill()
                except (OSError, ValueError):
                    pass

    # -- worker processes -------------------------------------------------
    def _start_template(self) -> ForkTemplate | None:
        """Under fork, the process that forks replacement workers (_fork_template.py).

        Forked here, in the caller's thread, before the first workers, as
        the stdlib forks those; the scheduler thread never forks.  None
        under spawn and forkserver, which never fork this process.
        """
        if self._ctx.get_start_method() != "fork":
            return None
        with _sigint_shielded_start("fork"):
            return ForkTemplate(self._ctx, self._table, self._config)

    def _spawn_worker(self, slot: int, in_caller_thread: bool = False) -> None:
        """Start a worker for *slot*.

        Under fork, only the caller's thread forks this process (the first
        workers, in ``__init__``); later workers are forked by the template.
        Raises ``ProcessError`` if the template is gone, and what
        ``Process.start()`` raises.
        """
        base = slot * m.SLOT_WIDTH
        for i in range(m.SLOT_WIDTH):
            self._table[base + i] = 0.0
        self._worker_counter += 1
        spawned, replaces = time.monotonic(), self._slot_pids.get(slot)
        if self._template is not None and not in_caller_thread:
            process, parent_conn = self._template.spawn(slot, self._worker_counter)
            self._workers[slot] = WorkerHandle(process, parent_conn, slot, spawned, replaces)
            self._slot_pids[slot] = process.pid
            return
        parent_conn, child_conn = mp_connection.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main, args=(child_conn, self._table, slot, self._config),
            name=f"PolyPoolWorker-{self._worker_counter}", daemon=True)
        with _sigint_shielded_start(self._ctx.get_start_method()):
            try:
                process.start()
            finally:
                child_conn.close()
        self._workers[slot] = WorkerHandle(process, parent_conn, slot, spawned, replaces)
        self._slot_pids[slot] = process.pid

    def _replace_workers(self) -> None:
        if self.broken is not None or self.state == TERMINATE:
            return
        if self.state == CLOSE and not (self._pending or self._requeued or self._feeders):
            return
        for slot in range(self.size):
            if slot not in self._workers:
                try:
                    self._spawn_worker(slot)
                except ProcessError as exc:  # the fork template is gone
                    self._break(exc)
                    return

    def _shutdown_workers(self) -> None:
        self._stop_template()
        for w in self._workers.values():
            w.shutdown_sent = True
            try:
                w.conn.send_bytes(_serialization.dumps(m.Shutdown(), "message"))
            except OSError:
                pass
        deadline = time.monotonic() + 5.0
        for w in list(self._workers.values()):
            w.process.join(max(0.0, deadline - time.monotonic()))
        self._kill_workers()

    def _kill_workers(self) -> None:
        self._stop_template()
        workers = list(self._workers.values())
        for w in workers:
            if w.process.exitcode is None:
                try:
                    w.process.terminate()
                except (OSError, ValueError):
                    pass
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        for w in workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.exitcode is None:
                try:
                    w.process.kill()
                except (OSError, ValueError):
                    pass
                w.process.join(1.0)
        for w in workers:
            if self._instruments:
                self._instruments.worker_exited(w, w.process.exitcode, w.assigned, True,
                                                time.monotonic())
            for c in w.assigned:
                c.release()
            w.assigned.clear()
            w.conn.close()
        self._workers.clear()

    def _stop_template(self) -> None:
        # No worker is started after this: the template exits as soon as
        # the workers it forked have, while the others shut down.
        if self._template is not None:
            self._template.stop()

    def _close_resources(self) -> None:
        if self._template is not None:
            self._template.close()
        for c in list(self._pending) + list(self._requeued):
            c.release()
        for fd in (self._wakeup_r, self._wakeup_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wakeup_r = self._wakeup_w = -1


@contextlib.contextmanager
def _sigint_shielded_start(start_method: str):
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
        from multiprocessing import forkserver
        forkserver.ensure_running()
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


def _timing_key(func: bytes) -> bytes | tuple[int, int]:
    """The key of a pickled function in the table of task times.

    The bytes themselves when small (by-reference pickles: a few dozen
    bytes), else their length and hash: a closure pickled by value can
    carry megabytes of captured data, which the table must not keep for
    the pool's lifetime.  ``hash()`` of a bytes object is computed once and
    cached in it, and the chunks of one call share one bytes object, so
    this costs nothing per lookup; a collision would only mix up two
    functions' time estimates.
    """
    if len(func) <= MAX_TIMING_KEY_BYTES:
        return func
    return (len(func), hash(func))


def _drop_chunks_of(queue: collections.deque, sinks: set) -> None:
    """Remove (and release) the chunks of *sinks* from *queue*, keeping the order.

    Caller threads may append to the queue meanwhile (``submit``): it is
    emptied from the left, their appends included, and what stays goes
    back in front of anything appended since.
    """
    kept = []
    while queue:
        chunk = queue.popleft()
        if chunk.sink in sinks:
            chunk.release()
        else:
            kept.append(chunk)
    queue.extendleft(reversed(kept))


def _deliver(chunk: TaskChunk, offset: int, values: list, errors: dict) -> None:
    """Hand outcomes of chunk.items[offset:offset+len(values)] to the chunk's sink."""
    chunk.sink.deliver(chunk.start + offset, values, errors)


def _fail_chunk(chunk: TaskChunk, exc: BaseException,
                instruments: Instruments | None = None) -> None:
    if instruments:
        instruments.tasks_failed(chunk.chunk_id, chunk.sink, chunk.start, chunk.count,
                                 exc, time.monotonic())
    _deliver(chunk, 0, [None] * chunk.count, dict.fromkeys(range(chunk.count), exc))
    chunk.release()
