"""The local process backend of a Pool: worker processes and the thread that runs them.

``ProcessScheduler`` is the ``Backend`` (``_pool/backend.py``) named
``"process"``.  Data flow of a task (the same diagram is in
ARCHITECTURE.md; every name in it is a class, thread, method or function
of the code)::

  caller thread              | PoolScheduler thread              | worker processes
  Pool (_pool/api.py)        | ProcessScheduler._run             | worker_main, _Worker.serve
                             | (_backends/process/scheduler.py)  | (_backends/process/worker.py)
                             |                                   |
  Pool.map, apply_async,     |                                   |
  imap...: make_chunk makes  |                                   |
  each TaskChunk, with the   |                                   |
  arguments pickled here (an |                                   |
  error fails that task)     |                                   |
  ProcessScheduler.submit ---+-> _pending, _wake()               |
                             |        |                          |
                             |        v                          |
                             |  _dispatch_chunks,                |
                             |  _send_dispatch: a batch of       |
                             |  chunks in one Dispatch ----------+-> its own duplex pipe:
                             |                                   |   _Worker.run_dispatch;
                             |                                   |   _Worker.mark writes its
                             |                                   |   progress slot (shared table)
                             |  _receive_messages,               |
                             |  _on_results <--------------------+-- Results
                             |        |                          |
  ApplyResult.get,           |        v                          |
  MapResult.get, <-----------+-- sink.deliver(start, values,     |
  IMapIterator.next          |      errors)                      |
                             |                                   |
                             |  _on_task_progress <--------------+-- TaskProgress (a task's
                             |  -> ProgressBar: nested bars      |   polyproc.progress loop)
                             |                                   |
                             |  _on_worker_exit (sentinel) <-----+-- died, or retired
                             |  -> blame.recover_lost_chunks:    |
                             |     charge one task, _requeue     |
                             |     the rest; _replace_workers    |

One thread does all the bookkeeping (like ``concurrent.futures``' executor
manager thread, and unlike the stdlib Pool's three handler threads), so the
state below needs no locks: caller threads only append to ``_pending`` (a
deque, whose append is atomic) and poke the wake-up pipe.  The same thread
fires the events of the pool's instruments (instruments.py), each behind
one ``if self._instruments:``, so a pool without them builds no event.

Why each worker has its *own* pipe (the stdlib shares one queue among all
workers): a worker that dies while holding a shared queue's lock, or half
way through writing a message, wedges everyone (gh-66587, pebble #163).
With a pipe each, a dead worker can only break its own pipe, and the
scheduler always knows which tasks were on which worker.

What happens when a worker dies (who is to blame, what a retry costs,
when deaths at start-up break the pool) is decided in blame.py, as
functions of what the scheduler knows; how a worker starts and stops is
worker_handles.py; the table of seconds per task is timing.py; the
workers' stacks and when a stall is reported (``hang_report=``), stacks.py.
"""
from __future__ import annotations

import collections
import itertools
import os
import sys
import threading
import time
from multiprocessing import connection as mp_connection
from typing import Callable

from ... import messages as m
from ...._transport import serialization as _serialization
from ...._transport import shm_cache
from ...._exceptions import (InitializerError, ProcessError, SerializationError,
                          UnloadableError)
from .blame import Death, StartupRecord, recover_lost_chunks
from .timing import MAX_TIMING_KEY_BYTES, TaskTimes, timing_key
from .fork_template import ForkTemplate, template_start_method
from ...._transport.remote_errors import rebuild_exception
from ...._process import fork_pause
from ...backend import CLOSE, RUN, TERMINATE
from ...chunks import TaskChunk, Transport
from ...instruments import Instruments
from ...options import WorkerOptions
from ...progress import bars_cleared
from . import stacks as _stacks
from .worker import WorkerConfig
from .worker_handles import (WorkerHandle, clear_slot, sigint_shielded_start,
                             start_worker, stop_processes)

TARGET_BATCH_SECONDS = 0.02   # work per Dispatch message once task times are known
MAX_BATCH_CHUNKS = 256
PREFETCH_BYTES = 32 * 1024     # a second Dispatch may wait in a busy worker's pipe if smaller
PREFETCH_AHEAD_SECONDS = 0.1   # ... and if the work ahead of it is known to end sooner
TIMEOUT_POLL_SECONDS = 0.05
FAST_TASK_SECONDS = 20e-6      # below this, a task's progress is not recorded
SHUTDOWN_GRACE_SECONDS = 0.5
STACKS_TIMEOUT_SECONDS = 1.0   # a hang report waits this long for the workers' stacks


class ProcessScheduler:
    """Runs TaskChunks on a set of local worker processes.

    The ``Backend`` of ``Pool`` and ``Executor`` (see ``_pool/backend.py``
    for the contract of each method), under the name ``"process"``.
    Events go to *instruments* (instruments.py).
    """

    transport = Transport.SHARED_MEMORY

    def __init__(self, options: WorkerOptions, ctx,
                 abort_all: Callable[[BaseException], None],
                 instruments: Instruments | None = None):
        processes = options.workers
        initializer = options.initializer
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
        self._stacks_signal = _stacks.configured_signal()
        self._stacks_lock = threading.Lock()   # one request at a time (stacks.py)
        self._stall = (None if options.hang_report is None
                       else _stacks.StallWatch(options.hang_report))
        self._config = WorkerConfig(init_blob,
                                    _serialization.dumps(options.initargs, "initargs"),
                                    options.max_tasks, options.max_memory,
                                    self._stacks_signal)
        self._maxtasks = options.max_tasks
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
        self._times = TaskTimes()
        self._feeders = 0
        self._feeders_lock = threading.Lock()
        self._startup = StartupRecord()
        self._worker_counter = 0
        # Set once the first workers are known: at once, unless the template
        # forks them (_start_workers_and_template).
        self._first_workers_known = threading.Event()
        self._first_requests: list[tuple[int, int, float]] = []  # slot, number, time
        self._template: ForkTemplate | None = None
        # A fork elsewhere in this process (another Pool(), a Process)
        # may pause this pool's thread at the top of its loop (fork_pause):
        # _pause_requested asks, _paused says it did, resume() restarts it.
        self._pause_cond = threading.Condition(threading.Lock())
        self._pause_requested = False
        self._paused = False
        self._start_workers_and_template(processes)
        self._thread = self._start_thread(resumed=False)
        fork_pause.register(self)

    # ------------------------------------------------------------------
    # Called from caller threads
    # ------------------------------------------------------------------
    def submit(self, chunks: list[TaskChunk]) -> None:
        """Queue chunks for dispatch (never blocks)."""
        if self.broken is not None:
            # chunk_failed (in this thread) as for chunks queued before the
            # break: whether a call came before or after it is a race.
            for chunk in chunks:
                _fail_chunk(chunk, self.broken, self._instruments)
            return
        if self._instruments:  # before the chunks can be dispatched
            self._queued_at.append((time.monotonic(), chunks))
        self._pending.extend(chunks)
        self._wake()

    def task_seconds(self, func) -> float | None:
        return self._times.get(func)

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

    def worker_processes(self) -> list:
        """The worker processes now (a replaced worker is not among them).

        Right after ``__init__`` under fork, waits until the template has
        forked the first workers.
        """
        if threading.current_thread() is not self._thread:
            self._first_workers_known.wait()
        return [w.process for w in list(self._workers.values())]

    def stacks(self, timeout: float = 1.0) -> dict[int, str]:
        """``{pid: text}`` for every worker now: the tasks it holds, then the
        Python stack of each of its threads (stacks.py).

        Returns within about *timeout* seconds (one request at a time: a
        concurrent call waits for the one in progress); a worker that does
        not answer, or dies meanwhile, gets a text that says so.  Called
        from any thread, the scheduler's included (``_check_hang``).
        """
        with self._stacks_lock:
            return _stacks.worker_stacks(list(self._workers.values()), self._table,
                                         self._stacks_signal, timeout)

    def _hang_report_stacks(self) -> dict[int, str]:
        """``stacks()`` for a hang report, from the PoolScheduler thread.

        This thread delivers results and enforces timeouts: it waits for a
        caller's ``stacks()`` in progress (whose *timeout* may be long) no
        longer than it would wait for the workers; past that, the report
        has the tasks each worker holds, without their stacks.
        """
        if not self._stacks_lock.acquire(timeout=STACKS_TIMEOUT_SECONDS):
            return _stacks.worker_stacks(list(self._workers.values()), self._table,
                                         self._stacks_signal, 0, ask=False)
        try:
            return _stacks.worker_stacks(list(self._workers.values()), self._table,
                                         self._stacks_signal, STACKS_TIMEOUT_SECONDS)
        finally:
            self._stacks_lock.release()

    def close(self) -> None:
        if self.state == RUN:
            self.state = CLOSE
        self._wake()

    def terminate(self, kill: bool = False) -> None:
        self.state = TERMINATE
        if kill:
            # After TERMINATE: the scheduler must see it before it sees a
            # worker die, or it would requeue that worker's tasks and start
            # another.  The rest (SIGTERM, then SIGKILL) is _kill_workers'.
            for process in self.worker_processes():
                try:
                    process.kill()
                except (OSError, ValueError):
                    pass
        self._wake(force=True)
        self.join()

    def join(self, timeout: float | None = None) -> None:
        """Wait up to *timeout* s for the PoolScheduler thread to end for
        good: a thread paused for a fork (``fork_pause``) has not."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while threading.current_thread() is not self._thread:
            thread = self._thread
            fork_pause.join_os_thread(thread, _remaining(deadline))
            if thread.is_alive():
                return
            with self._pause_cond:
                while self._paused:
                    if fork_pause.pausing_in_this_thread():
                        return  # it resumes once this thread's fork is done
                    if not self._pause_cond.wait(_remaining(deadline)):
                        return
                if self._thread is thread:
                    return

    # -- fork_pause.PausableThread: a fork in this process pauses this thread
    def running_thread(self) -> threading.Thread | None:
        thread = self._thread
        return thread if thread.is_alive() else None

    def request_pause(self) -> None:
        with self._pause_cond:
            self._pause_requested = True
        self._wake(force=True)

    def wait_paused(self, timeout: float) -> bool:
        fork_pause.join_os_thread(self._thread, timeout)
        return not self._thread.is_alive()

    def resume(self) -> None:
        with self._pause_cond:
            self._pause_requested = False
            if self._paused:
                self._paused = False
                self._thread = self._start_thread(resumed=True)
                self._pause_cond.notify_all()

    def _start_thread(self, resumed: bool) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(resumed,),
                                  name="PoolScheduler", daemon=True)
        thread.start()
        return thread

    def _pause_here(self) -> bool:
        """At the top of the loop, where no state is half-changed: end this
        thread if a fork asked for it (``resume`` starts another)."""
        with self._pause_cond:
            if self._pause_requested:
                self._paused = True
                return True
            return False

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
    def _run(self, resumed: bool) -> None:
        paused = False
        try:
            if not resumed:
                self._collect_first_workers()
            while self.state != TERMINATE:
                if self._pause_requested and self._pause_here():
                    paused = True
                    return
                self._wakeup_armed = False
                self._apply_cancels()
                self._dispatch_chunks()
                if self.state == CLOSE and self._all_done():
                    self._shutdown_workers()
                    return
                if self._stall is not None:
                    self._check_hang(self._stall)
                self._wait_and_handle_events()
                self._enforce_timeouts()
                self._replace_workers()
        except BaseException as exc:  # a bug here must not hang callers
            self.broken = ProcessError(f"polyproc pool scheduler crashed: {exc!r}")
            self.broken.__cause__ = exc
            self._abort_all(self.broken)
            raise
        finally:
            if not paused:
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
        if self._stall is not None:
            return self._stall.next_timeout(time.monotonic())
        return None

    def _check_hang(self, stall: _stacks.StallWatch) -> None:
        """Write the workers' stacks to stderr once per stall (``hang_report=``).

        Blocks this thread for up to twice ``STACKS_TIMEOUT_SECONDS`` when
        it does (``_hang_report_stacks``), while nothing finishes anyway.
        """
        busy = bool(self._pending or self._requeued
                    or any(w.assigned for w in self._workers.values()))
        seconds = stall.due(busy, time.monotonic())
        if seconds is None or sys.stderr is None:
            return
        queued = sum(c.count for c in itertools.chain(self._pending, self._requeued))
        held = sum(c.count for w in self._workers.values() for c in w.assigned)
        text = _stacks.hang_report_text(seconds, stall.seconds, queued + held, queued,
                                        self._hang_report_stacks())
        try:
            with bars_cleared(sys.stderr):  # progress bars: not drawn over it
                sys.stderr.write(text)
                sys.stderr.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stderr: nobody to tell

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
        timings = self._times.by_key
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
        worker records its progress (see ``messages.TRACK_*``).
        """
        queued = len(self._pending) + len(self._requeued)
        ready = sum(1 for x in self._workers.values() if x.ready) or 1
        limit = min(MAX_BATCH_CHUNKS, max(1, queued // (4 * ready)))
        if self._maxtasks is not None:
            limit = min(limit, self._maxtasks - w.chunks_given)
        timings = self._times.by_key
        requeued, pending = self._requeued, self._pending
        batch: list[TaskChunk] = []
        size = 0
        seconds = 0.0
        while len(batch) < limit and (requeued or pending):
            head = requeued[0] if requeued else pending[0]
            func = head.func  # timing_key inlined: once per chunk
            per_task = timings.get(func if len(func) <= MAX_TIMING_KEY_BYTES
                                   else timing_key(func))
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
            load_started = time.monotonic() if self._instruments else 0.0
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
                    now = time.monotonic()
                    self._instruments.results_received(
                        w.process.pid, message, len(data), *m.frame_dump_times(data),
                        now, _serialization.shared_bytes(body), now - load_started)
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
        elif isinstance(msg, m.TaskProgress):
            self._on_task_progress(w, msg)
        elif isinstance(msg, m.WorkerReady):
            w.ready = True
            w.stacks_fd = msg.stacks_fd
            self._startup.worker_ready()
            if self._instruments:
                self._instruments.worker_started(w, msg.entered, msg.ready,
                                                 time.monotonic())
        elif isinstance(msg, m.StacksReady):
            w.stacks_fd = msg.stacks_fd
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

    def _on_task_progress(self, w: WorkerHandle, msg: m.TaskProgress) -> None:
        """A task's ``polyproc.progress`` loop reported: tell the instruments
        (the call's progress bar draws it), naming the call it belongs to."""
        if not self._instruments:
            return  # nobody shows it: dropped
        chunk = next((c for c in w.assigned if c.chunk_id == msg.chunk_id), None)
        if chunk is not None:  # None: not a task's (an initializer's loop)
            # The task's position in its call, where the worker records it.
            position = (None if chunk.tracking == m.TRACK_NONE
                        else chunk.start + msg.task)
            self._instruments.task_progress(w.process.pid, chunk, position, msg,
                                            time.monotonic())

    def _on_results(self, w: WorkerHandle, results: m.Results) -> None:
        """Deliver each finished chunk's outcomes; results come in dispatch order."""
        if self.broken is not None:
            # The pool broke while *w* ran these chunks: ``_break`` failed
            # and forgot them (w.assigned is empty); their outcomes are late.
            return
        assigned, dispatch_ends = w.assigned, w.dispatch_ends
        all_errors = results.errors
        timing_func: bytes | None = None
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
                if timing_func is not None and timing_tasks:
                    self._times.learn(timing_func, timing_seconds, timing_tasks)
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
        if timing_func is not None and timing_tasks:
            self._times.learn(timing_func, timing_seconds, timing_tasks)
        if self._stall is not None:
            self._stall.tasks_finished()

    # -- failures -------------------------------------------------------
    def _on_worker_exit(self, w: WorkerHandle) -> None:
        self._receive_messages(w)   # results it sent before it died count
        w.process.join(1.0)
        exitcode = w.process.exitcode
        del self._workers[w.slot]
        w.conn.close()
        # Its results still in shared memory that were not in the pipe
        # are lost: let the session's tracker remove them now.
        shm_cache.drained(w.process.pid)
        lost = list(w.assigned)
        w.assigned.clear()
        if self._instruments:
            self._instruments.worker_exited(w, exitcode, lost, self.state == TERMINATE,
                                            time.monotonic())
        if not w.ready and self.broken is None and self.state != TERMINATE:
            # It holds no task: go on (it is replaced), or break (blame.py).
            error = self._startup.worker_died(
                exitcode, any(x.ready for x in self._workers.values()),
                self._ctx.get_start_method(), self._initializer_name)
            if error is not None:
                self._break(error)
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
        if self._queued_at:  # chunk_queued before their chunk_cancelled
            self._announce_queued()
        dropped = _drop_chunks_of(self._pending, sinks) + \
            _drop_chunks_of(self._requeued, sinks)
        if self._instruments and dropped:
            self._instruments.chunks_cancelled(dropped, time.monotonic())
        for w in self._workers.values():
            if not any(c.sink in sinks for c in w.assigned):
                continue
            w.cancelled_sinks = w.cancelled_sinks | sinks
            try:
                w.process.kill()
            except (OSError, ValueError):
                pass

    def _recover_lost_chunks(self, w: WorkerHandle, lost: list[TaskChunk],
                             exitcode: int | None) -> None:
        """Deliver the failures and requeue what blame.py decides about the
        chunks *lost* with worker *w* (in dispatch order)."""
        base = w.slot * m.SLOT_WIDTH
        table = self._table
        death = Death(table[base + m.SLOT_PHASE], int(table[base + m.SLOT_CHUNK]),
                      int(table[base + m.SLOT_TASK]), w.timed_out, w.process.pid,
                      exitcode)
        recovery = recover_lost_chunks(lost, death)
        if self._instruments:
            now = time.monotonic()
            for chunk, task, retry in recovery.retried:
                self._instruments.task_blamed(w.process.pid, chunk, task, None, retry, now)
            for chunk, task, exc in recovery.failures:
                self._instruments.task_blamed(w.process.pid, chunk, task, exc, None, now)
        for chunk, task, exc in recovery.failures:
            _deliver(chunk, task, [None], {0: exc})
        if recovery.failures and self._stall is not None:
            self._stall.tasks_finished()  # blamed for a death, or timed out: finished
        for c in lost:
            c.release()
        self._requeue(recovery.requeue)

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
    def _start_workers_and_template(self, processes: int) -> None:
        """Start the first workers and, under fork, the template
        (``fork_template.py`` beside this module), from the caller's thread.

        Under fork (``template_start_method``: by default), this thread
        forks the first workers, as the stdlib does, then the template; the
        PoolScheduler thread, started after, never forks.  With
        ``POLYPROC_THREADED_FORK=forkserver`` and other threads running,
        nothing is forked here: the fork server starts the template, which
        forks every worker, the first ones included (asked for here,
        collected by the PoolScheduler thread).  Under spawn and forkserver there is
        no template.  Raises what ``Process.start()`` raises.
        """
        if self._ctx.get_start_method() != "fork":
            self._start_workers_and_template_as(None, processes)
            return
        # Other pools' PoolScheduler threads end until the forks are done
        # (fork_pause): then template_start_method() sees one thread.
        with fork_pause.own_threads_paused():
            self._start_workers_and_template_as(template_start_method(), processes)

    def _start_workers_and_template_as(self, method: str | None, processes: int) -> None:
        """``_start_workers_and_template`` once *method* is known: how the
        template starts (``template_start_method``), None for no template."""
        try:
            if method != "forkserver":
                for slot in range(processes):
                    self._spawn_worker(slot)
            if method is not None:
                # The template must not hold the caller's ends of the first
                # workers' pipes: a worker sees EOF when the scheduler closes its end.
                ends = [w.conn.fileno() for w in self._workers.values()]
                with sigint_shielded_start(method):
                    self._template = ForkTemplate(self._ctx, self._table, self._config,
                                                  start_method=method, inherited_fds=ends)
            if method == "forkserver":
                for slot in range(processes):
                    self._request_first_worker(slot)
        except BaseException:
            if self._template is not None:
                self._template.close()
            stop_processes([w.process for w in self._workers.values()], 0.0)
            for w in self._workers.values():
                w.conn.close()
            raise
        if not self._first_requests:
            self._first_workers_known.set()

    def _request_first_worker(self, slot: int) -> None:
        """Ask the template for the first worker of *slot* (collected by
        ``_collect_first_workers``).  Raises ``ProcessError`` if the
        template is gone."""
        assert self._template is not None
        clear_slot(self._table, slot)
        self._worker_counter += 1
        self._template.request(slot, self._worker_counter)
        self._first_requests.append((slot, self._worker_counter, time.monotonic()))

    def _collect_first_workers(self) -> None:
        """Take the first workers that the template forked (in the
        PoolScheduler thread); a failed fork breaks the pool."""
        if not self._first_requests:
            return
        assert self._template is not None
        error: BaseException | None = None
        try:
            for slot, number, spawned in self._first_requests:
                try:
                    process, conn = self._template.collect(slot, number)
                except ProcessError as exc:  # the template is gone
                    error = error or exc
                    continue
                except OSError as exc:  # its fork failed
                    error = error or ProcessError(
                        f"the pool's template process could not fork worker "
                        f"{number}: {exc}.  Too many processes, or too little memory?")
                    continue
                self._workers[slot] = WorkerHandle(process, conn, slot, spawned)
                self._slot_pids[slot] = process.pid
        finally:
            self._first_requests.clear()
            self._first_workers_known.set()
        if error is not None:
            self._break(error)

    def _spawn_worker(self, slot: int) -> None:
        """Start a worker for *slot*: the template forks it once there is
        one (under fork, after ``__init__``), else this thread starts it
        with the pool's context (the first workers, or any worker under
        spawn and forkserver).

        Raises ``ProcessError`` if the template is gone, and what
        ``Process.start()`` raises.
        """
        clear_slot(self._table, slot)
        self._worker_counter += 1
        spawned, replaces = time.monotonic(), self._slot_pids.get(slot)
        if self._template is not None:
            process, parent_conn = self._template.spawn(slot, self._worker_counter)
            self._workers[slot] = WorkerHandle(process, parent_conn, slot, spawned, replaces)
            self._slot_pids[slot] = process.pid
            return
        self._workers[slot] = start_worker(self._ctx, self._table, slot, self._config,
                                           self._worker_counter, spawned, replaces)
        self._slot_pids[slot] = self._workers[slot].process.pid

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
        stop_processes([w.process for w in workers], SHUTDOWN_GRACE_SECONDS)
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


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _drop_chunks_of(queue: collections.deque, sinks: set) -> list[TaskChunk]:
    """Remove (and release) the chunks of *sinks* from *queue*, keeping the
    order of the others; return those removed.

    Caller threads may append to the queue meanwhile (``submit``): it is
    emptied from the left, their appends included, and what stays goes
    back in front of anything appended since.
    """
    kept, dropped = [], []
    while queue:
        chunk = queue.popleft()
        if chunk.sink in sinks:
            chunk.release()
            dropped.append(chunk)
        else:
            kept.append(chunk)
    queue.extendleft(reversed(kept))
    return dropped


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
