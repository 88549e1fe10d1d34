"""The loop a pool worker process runs.

A worker owns one end of a duplex pipe to the scheduler (nobody else reads
or writes it, so a worker that dies mid-message can only ever corrupt its
own pipe, which the scheduler then discards) and one slot of the pool's
progress table in shared memory.  Before each step it writes into that slot
what it is about to do: load a chunk, run task *i* of chunk *c* (and when it
started), dump results.  Those are plain stores into shared memory, a few
tens of nanoseconds each; they let the scheduler know, when this process
dies without a word, exactly which task killed it (see _pool/_backends/process/scheduler.py).

Results are sent in batches: after a chunk finishes, its ``ChunkDone`` is
held back while more chunks are waiting in this worker's queue and the
batch is younger than ``FLUSH_SECONDS``.  Many tiny tasks then cost one
message, not one each, while a slow chunk's result goes out as soon as it
is done.

SIGINT is ignored here with a no-op handler (not SIG_IGN, which would be
inherited by programs a task runs): Ctrl-C in a terminal reaches the whole
process group, and it is the parent's job to stop the pool, not the
workers' job to print a traceback each.
"""
from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, NamedTuple

from ... import messages as m
from ... import task_progress
from ...._transport import serialization as _serialization
from ...._transport import shm_cache
from ...._exceptions import SerializationError, UnloadableError
from ...chunks import item_caller
from . import stacks as _stacks

FLUSH_SECONDS = 0.005


class WorkerConfig(NamedTuple):
    initializer: bytes | None   # pickled callable, or None
    initargs: bytes             # pickled tuple
    maxtasks: int | None        # chunks before the worker retires
    max_memory: int | None      # bytes of RSS after which it retires
    stacks_signal: int = 0      # the signal to dump stacks on (stacks.py), 0: none

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A worker started by the fork server inherits no SIGINT shield
        # (worker_handles.sigint_shielded_start): the server's child gets
        # Python's default handler back, and a terminal's Ctrl-C landing
        # while it starts would print a KeyboardInterrupt traceback from a
        # worker that then dies.  Its config is unpickled with the process
        # object, before the worker's own code runs: the handler is made
        # harmless there, as early as anything of polyproc's runs.
        return _config_in_worker, (os.getpid(), tuple(self))


def _config_in_worker(pickled_by: int, fields: tuple) -> WorkerConfig:
    """Unpickle a ``WorkerConfig``; in another process than the one that
    pickled it (a worker starting), SIGINT no longer raises from here on."""
    if os.getpid() != pickled_by and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _noop_signal_handler)
    return WorkerConfig(*fields)


def _noop_signal_handler(signum, frame):
    pass


def _exception_payload(exc: BaseException) -> bytes:
    # No size limit (Process.exception's pipe needs one): the scheduler
    # reads this pipe all the time, so a 1 MiB message arrives whole.
    from ...._transport.remote_errors import exception_payload
    return exception_payload(exc, limit=None)


class _Worker:
    """State of one worker process; ``serve()`` is the whole life of it."""

    def __init__(self, conn, table, slot: int, config: WorkerConfig):
        self.conn = conn
        self.table = table
        # Stores through a memoryview are about twice as fast as through
        # the ctypes array.
        self.slots = memoryview(table).cast("B").cast("d")
        self.base = slot * m.SLOT_WIDTH
        self.config = config
        # Unpickled functions, by their bytes: those the parent pickled by
        # reference for the worker's life (they live in their module anyway),
        # the others only for the Dispatch message they came in, so that the
        # worker keeps no copy of a bound method's instance, a partial's
        # arguments or a closure's cells once their tasks are done.
        self.functions: dict[bytes, Callable] = {}
        self.dispatch_functions: dict[bytes, Callable] = {}
        self.chunks_run = 0
        self.outbox: list[m.ChunkDone] = []
        self.outbox_since = 0.0
        # Results go to the scheduler in the parent only, which reads this
        # worker's pipe to the end if it dies: see shm_cache.addressed_to.
        import multiprocessing
        parent = multiprocessing.parent_process()
        self.scheduler_pid = parent.pid if parent is not None else os.getppid()

    # -- the slot in the progress table -------------------------------
    def mark(self, phase: float, chunk_id: float = -1.0) -> None:
        slots, base = self.slots, self.base
        slots[base + m.SLOT_CHUNK] = chunk_id
        slots[base + m.SLOT_PHASE] = phase

    # -- messages -------------------------------------------------------
    def send(self, message: Any) -> None:
        self.conn.send_bytes(m.frame(0, _serialization.dumps(message, "message")))

    def flush(self) -> None:
        if not self.outbox:
            return
        self.mark(m.PHASE_DUMPING, self.outbox[-1].chunk_id)
        done, self.outbox = self.outbox, []
        dump_started = time.monotonic()
        with shm_cache.addressed_to(self.scheduler_pid):
            try:
                data = _serialization.dumps(m.Results.of(done), "results")
            except BaseException:
                # A value that cannot be pickled (any type: see dumps), or
                # whose __reduce__ raised SystemExit or the like: user code,
                # which must cost its own task only, not the worker (see
                # _replace_unpicklable).  SIGINT cannot raise here: it is
                # ignored in workers.
                data = _serialization.dumps(
                    m.Results.of(_replace_unpicklable(done)), "results")
        self.conn.send_bytes(m.frame(done[-1].chunk_id, data, dump_started,
                                     time.monotonic() - dump_started))
        self.mark(m.PHASE_IDLE)

    def report_progress(self, bar: int, n: int, total: int | None, desc: str | None,
                        closed: bool) -> bool:
        """Send a ``TaskProgress`` of the running task (``polyproc.progress``).

        Called from the task, in this process's main thread, between the
        store of the task's index and its outcome: the slot names the chunk.
        Returns False if the parent can no longer be told.
        """
        slots, base = self.slots, self.base
        chunk_id, task = int(slots[base + m.SLOT_CHUNK]), int(slots[base + m.SLOT_TASK])
        # Plain ints and a str: the parent must unpickle what the user
        # passed (a numpy integer as total) without the user's classes.
        message = m.TaskProgress(chunk_id, task, bar, n, _plain_total(total),
                                 None if desc is None else str(desc), closed)
        try:
            self.send(message)
        except (OSError, ValueError):
            return False  # the parent is gone, or closed our pipe
        return True

    # -- running --------------------------------------------------------
    def initialize(self) -> bool:
        cfg = self.config
        if cfg.initializer is None:
            return True
        try:
            initializer = _serialization.loads(cfg.initializer, "initializer")
            initializer(*_serialization.loads(cfg.initargs, "initargs"))
        except BaseException as exc:
            self.send(m.InitializerFailed(_exception_payload(exc)))
            return False
        return True

    def function(self, blob: bytes) -> Callable:
        fn = self.functions.get(blob)
        if fn is None:
            fn = self.dispatch_functions.get(blob)
        if fn is None:
            fn = _serialization.loads(blob, "function")
            if _serialization.is_by_reference(fn):
                if len(self.functions) > 256:
                    self.functions.clear()
                self.functions[blob] = fn
            else:
                self.dispatch_functions[blob] = fn
        return fn

    def run_chunk(self, job: m.ChunkJob) -> m.ChunkDone:
        # time.monotonic(), not perf_counter(): the start is also reported as
        # a time, which the parent compares with its own (see instruments.py).
        started = time.monotonic()
        self.mark(m.PHASE_LOADING, job.chunk_id)
        try:
            fn = self.function(job.func)
            items = _serialization.loads(job.payload, "task arguments")
        except BaseException as exc:
            # Every task of the chunk fails the same way; the scheduler
            # knows the chunk's size.
            if isinstance(exc, SerializationError):
                exc = _unloadable_task(exc)
            self.mark(m.PHASE_IDLE, job.chunk_id)
            seconds = time.monotonic() - started
            return m.ChunkDone(job.chunk_id, [], {-1: _exception_payload(exc)},
                               seconds, started, seconds)
        call_fn = item_caller(fn, job.call)
        values: list = []
        errors: dict[int, bytes] = {}
        slots = self.slots
        # Store order matters: the scheduler reads TASK then STARTED to
        # enforce timeouts, so STARTED is written first.  A torn read then
        # can only see a start time that is too recent (a late timeout),
        # never a stale one (a false timeout).
        loaded = slots[self.base + m.SLOT_STARTED] = time.monotonic()
        slots[self.base + m.SLOT_TASK] = 0
        slots[self.base + m.SLOT_PHASE] = m.PHASE_RUNNING
        if job.tracking == m.TRACK_TIME or self.config.max_memory is not None:
            retired = self.run_items_watched(call_fn, items, values, errors)
            if retired is not None:
                raise _Retire(retired, m.ChunkDone(job.chunk_id, values, errors,
                                                   time.monotonic() - started, started,
                                                   loaded - started))
        elif job.tracking == m.TRACK_NONE:
            self.run_items_untracked(fn, job.call, call_fn, items, values, errors)
        else:
            self.run_items(call_fn, items, values, errors)
        # Idle, with this chunk's outcome not sent yet: the scheduler tells
        # the chunks that ran from those that did not start by this id.
        self.mark(m.PHASE_IDLE, job.chunk_id)
        return m.ChunkDone(job.chunk_id, values, errors,
                           time.monotonic() - started, started, loaded - started)

    # The two task loops.  They are the hottest code in polyproc: a map of
    # trivial tasks spends most of its time here, so each iteration does
    # the least it can: one store of the task index into the progress slot
    # (what lets the scheduler blame the right task if this process dies),
    # the call, an append.  Exceptions leave the inner loop and re-enter it
    # after the failed item, so the common path sets up no handler per item.
    def run_items(self, call_fn, items, values: list, errors: dict) -> None:
        slots, task_at = self.slots, self.base + m.SLOT_TASK
        append = values.append
        begin, n = 0, len(items)
        while begin < n:
            i = begin
            try:
                for i, item in enumerate(items[begin:] if begin else items, begin):
                    slots[task_at] = i
                    append(call_fn(item))
                return
            except BaseException as exc:
                errors[i] = _exception_payload(exc)
                append(None)
                begin = i + 1

    def run_items_untracked(self, fn, call, call_fn, items, values: list,
                            errors: dict) -> None:
        """The loop for tasks of a few microseconds: no per-task record.

        ``list.extend`` over ``map`` runs the calls from C; on an exception
        the values so far are kept and ``len(values)`` is the failed index.
        If the worker dies in such a chunk, the scheduler cannot tell which
        task killed it and runs the chunk's tasks again one per chunk (see
        _pool/_backends/process/scheduler.py), where the culprit is then known.
        """
        begin, n = 0, len(items)
        while begin < n:
            rest = items[begin:] if begin else items
            try:
                if call == m.CALL_STAR:
                    values.extend(itertools.starmap(fn, rest))
                else:
                    values.extend(map(call_fn, rest))
                return
            except BaseException as exc:
                i = len(values)
                errors[i] = _exception_payload(exc)
                values.append(None)
                begin = i + 1

    def run_items_watched(self, call_fn, items, values: list,
                          errors: dict) -> str | None:
        """The loop for chunks with a timeout or a memory ceiling.

        Also records each task's start time (for the scheduler's timeout
        check) and, with ``max_memory_per_child``, checks the resident
        memory after each task; returns the reason to retire, or None.
        """
        slots = self.slots
        task_at, started_at = self.base + m.SLOT_TASK, self.base + m.SLOT_STARTED
        monotonic = time.monotonic
        check_memory = self.config.max_memory is not None
        for i, item in enumerate(items):
            slots[started_at] = monotonic()
            slots[task_at] = i
            try:
                values.append(call_fn(item))
            except BaseException as exc:
                errors[i] = _exception_payload(exc)
                values.append(None)
            if check_memory and i + 1 < len(items) and self.over_memory():
                return "max_memory_per_child"
        if check_memory and self.over_memory():
            return "max_memory_per_child"
        return None

    def over_memory(self) -> bool:
        import psutil
        limit = self.config.max_memory
        return limit is not None and psutil.Process().memory_info().rss > limit

    def serve(self) -> None:
        conn = self.conn
        while True:
            try:
                message = _serialization.loads(conn.recv_bytes(), "message")
            except (EOFError, OSError):
                return  # the parent is gone or closed our pipe
            if isinstance(message, m.Shutdown):
                return
            if not self.run_dispatch(message):
                return
            # Nothing of a finished Dispatch stays alive while this worker
            # waits for the next one (as the stdlib's worker drops its task).
            message = None
            if self.dispatch_functions:
                self.dispatch_functions.clear()

    def run_dispatch(self, message: m.Dispatch) -> bool:
        """Run a Dispatch's chunks and send their results; False: retiring."""
        maxtasks = self.config.maxtasks
        for job in message.jobs():
            try:
                done = self.run_chunk(job)
            except _Retire as retire:
                self.outbox.append(retire.done)
                self.flush()
                self.send(m.Retiring(retire.reason))
                return False
            self.outbox.append(done)
            self.chunks_run += 1
            if maxtasks is not None and self.chunks_run >= maxtasks:
                self.flush()
                self.send(m.Retiring("maxtasksperchild"))
                return False
            now = time.perf_counter()
            if len(self.outbox) == 1:
                self.outbox_since = now
            elif now - self.outbox_since >= FLUSH_SECONDS:
                self.flush()
        self.flush()
        return True


def _plain_total(total: Any) -> int | None:
    try:
        return None if total is None else int(total)
    except (TypeError, ValueError, OverflowError):
        return None  # not a count: the bar shows a rate instead


class _Retire(Exception):
    def __init__(self, reason: str, done: m.ChunkDone):
        super().__init__(reason)
        self.reason = reason
        self.done = done


def _unloadable_task(exc: SerializationError) -> BaseException:
    error = UnloadableError(f"{exc} (in the worker, pid {os.getpid()})")
    error.__cause__ = exc.__cause__
    return error


def _unpicklable_result(value: Any, exc: BaseException) -> BaseException:
    """The error of a task whose result *value* failed to pickle with *exc*.

    A ``MaybeEncodingError`` for the Pool (what the stdlib's raises); it
    carries *exc*, what pickle raised, for the Executor (what the stdlib's
    ``ProcessPoolExecutor`` raises), unless *exc* itself can't be pickled.
    """
    from ...._exceptions import UnpicklableResultError
    from ...._transport.remote_errors import pickle_exception
    # pickle's own error, not the SerializationError that names the value.
    cause = exc.__cause__ if isinstance(exc, SerializationError) else None
    reason_text = repr(cause or exc)
    message = (f"cannot send the result {_serialization.describe(value)} back "
               f"to the parent: {reason_text}. Results must be picklable; "
               f"return the data the object is made from instead.")
    value_text = _safe_repr(value)
    error = UnpicklableResultError(message, reason_text, value_text, exc)
    if pickle_exception(error) is None:  # *exc* can't cross: its repr will do
        error = UnpicklableResultError(message, reason_text, value_text, None)
    return error


def _safe_repr(obj: Any, limit: int = 1000) -> str:
    # The stdlib's MaybeEncodingError.value is repr(value); a repr that
    # raises, or runs to megabytes, must not take the worker down.
    try:
        text = repr(obj)
    except Exception:
        return _serialization.describe(obj)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _replace_unpicklable(done: list) -> list:
    """Swap each value that can't be pickled for that task's error.

    The error is an ``UnpicklableResultError`` naming the value (see
    ``_unpicklable_result``), or, when
    pickling it raised a ``BaseException`` that is not an ``Exception``
    (``SystemExit`` from a ``__reduce__``), that exception itself: the task
    fails with it as if the task had raised it, as
    ``concurrent.futures.ProcessPoolExecutor`` does.
    """
    fixed = []
    for chunk in done:
        values = list(chunk.values)
        errors = dict(chunk.errors)
        for i, value in enumerate(values):
            try:
                # Only to find the culprit: give back any segments it made.
                _serialization.release(_serialization.dumps(value, "result"))
            except BaseException as exc:
                values[i] = None
                # SystemExit and the like from a __reduce__ fail the task as
                # themselves (as ProcessPoolExecutor does); anything else is
                # the stdlib's MaybeEncodingError.
                errors[i] = _exception_payload(
                    _unpicklable_result(value, exc) if isinstance(exc, Exception) else exc)
        for i, payload in list(errors.items()):
            if not isinstance(payload, bytes):
                errors[i] = _exception_payload(RuntimeError(repr(payload)))
        fixed.append(chunk._replace(values=values, errors=errors))
    return fixed


def worker_main(conn, table, slot: int, config: WorkerConfig) -> None:
    """Entry point of a pool worker process (the Process target)."""
    entered = time.monotonic()
    signal.signal(signal.SIGINT, _noop_signal_handler)
    # Born with SIGINT blocked (see ProcessScheduler._spawn_worker).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    worker = _Worker(conn, table, slot, config)
    worker.mark(m.PHASE_IDLE)
    # The scheduler signals a worker only once it has heard of its file.
    stacks_fd = _stacks.install(config.stacks_signal)
    try:
        if config.initializer is not None and stacks_fd >= 0:
            worker.send(m.StacksReady(stacks_fd))  # an initializer may hang too
        if not worker.initialize():
            return
        task_progress.install_reporter(worker.report_progress)
        worker.send(m.WorkerReady(os.getpid(), entered, time.monotonic(), stacks_fd))
        worker.serve()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent went away while we were sending: nothing to do
    finally:
        _stacks.uninstall()
        sys.stdout.flush()
        sys.stderr.flush()
