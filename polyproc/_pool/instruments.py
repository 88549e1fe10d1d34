"""Instruments: objects that watch a pool work, called by its scheduler.

Modelled on trio's instruments (``trio/_core/_instrumentation.py`` and
``trio.abc.Instrument``): a user object with a method per event it cares
about, attached to a ``Pool`` or ``Executor`` (``instruments=[...]``,
``add_instrument``/``remove_instrument``); methods it does not override are
never called.  The progress bar (``progress=True``, progress.py) is one.

What is reported, and at what granularity.  The unit a pool schedules is
the *chunk* (a run of consecutive tasks of one call, sent to one worker);
workers measure chunks, not tasks, because a clock read per task would
double the cost of the microsecond tasks a map of a large list is made
of.  So the events are per chunk, and per task only where the scheduler
itself acts on one task (a retry, a timeout).  A chunk's life::

    chunk_queued ---> chunk_dispatched ---> chunk_finished      (the usual)
    (submitted, or    (sent to a worker)    (its outcomes are back; the
     requeued)                               worker's own times in it)
                                       \\--> chunk_failed       (failed in the
                                       |     parent: results that can't be
                                       |     unpickled, a broken pool, the
                                       |     task blamed for a lost worker)
                                       \\--> worker_exited      (its worker
                                             died: the chunks it held end
                                             there; what was not charged is
                                             queued again as new chunks)

plus ``results_received`` per message from a worker (how long the worker
spent pickling it, its size), ``task_progress`` (a task's own
``polyproc.progress`` loop reported, task_progress.py), ``task_retried``, ``task_timed_out``,
``worker_started`` (with the worker's start-up times, and the pid of the
worker it replaced) and ``worker_exited`` (why: lost, timed out, retired...).
A chunk of a call cancelled by Ctrl-C that was still queued gets
``chunk_cancelled``.  A chunk that was queued may get no further event if
the pool is terminated (``worker_exited`` then says so for the chunks the
workers held).  A chunk that retires with its worker half-way
(``maxtasksperchild``) finishes with fewer tasks than it was queued with,
and the rest is queued again as a new chunk.

Bytes.  ``payload_bytes`` and ``nbytes`` are what goes through a worker's
pipe; a payload with large buffers sends them through shared memory and
only their names through the pipe, and ``shared_bytes`` counts those (read
from the payload's header, only for payloads that have one).

Clocks.  Every time is a ``time.monotonic()`` reading in seconds.  Those the
worker measures (when it started a chunk, when it started pickling its
results) are comparable with the parent's: on Linux ``time.monotonic()`` is
``CLOCK_MONOTONIC``, one clock for the whole system, not per process.
Durations (``load_seconds``, ``run_seconds``, ``dump_seconds``) are
differences of the worker's readings.

Threads.  Events are called in the PoolScheduler thread, one at a time, so
an instrument of one pool sees them in order without a lock.  Exceptions:
``chunk_failed`` for tasks that failed before they reached the scheduler
(an argument that cannot be pickled, an ``imap`` input that raised, a
submission to a pool already broken) is
called in the thread that found it, and a ``ThreadPool`` calls everything
in its worker threads.  An instrument shared by several pools, or read by
another thread (a caller asking for totals), must lock what it shares.
Events must be quick: the scheduler waits for them, and so do all the
pool's workers.

An instrument that raises is removed from the pool and the error logged on
the ``polyproc.Instrument`` logger (as trio does); the pool goes on.

Cost.  With no instrument attached a pool fires nothing: each place that
would is guarded by one truth test of the pool's ``Instruments`` (an empty
dict): a few nanoseconds per message and per chunk, nothing per task.
The worker measures whether or not an instrument listens: per chunk the
three clock readings it took before (now all ``time.monotonic()``), plus
two per results message; they travel in the messages it sends anyway.
Event details are ``NamedTuple``s, immutable and about three times
cheaper to build than frozen dataclasses (0.3 against 1 microsecond),
because with instruments attached a storm of one-task calls builds three
of them per task.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Callable, Iterable, Literal, NamedTuple

__all__ = [
    "Instrument", "ChunkQueued", "ChunkDispatched", "ResultsReceived",
    "ChunkFinished", "ChunkFailed", "ChunkCancelled", "TaskRetried", "TaskTimedOut",
    "WorkerStarted", "WorkerExited", "TaskProgress",
]

# Where an instrument's error is logged (logging is imported only then).
INSTRUMENT_LOGGER_NAME = "polyproc.Instrument"


# -- what each event carries --------------------------------------------------

class ChunkQueued(NamedTuple):
    """A chunk of tasks waits for a worker."""
    chunk_id: int         # unique in the process, never reused
    call_id: int          # tells the calls apart while they run: id() of the
                          # call's result object (AsyncResult, iterator, Future)
    start: int            # position in its call of the chunk's first task
    tasks: int            # number of tasks
    function: str         # the function's qualified name (a partial's:
                          # "partial(f)"; a callable object's: its class's)
    payload_bytes: int    # size of the pickled arguments that go through the
                          # worker's pipe (buffers sent through shared memory
                          # count by their name only; 0 in a ThreadPool)
    requeued: bool        # queued again by the scheduler (a worker died or
                          # retired holding it, a retry), not by a caller
    time: float           # when it was queued (the caller's thread measured it)
    shared_bytes: int = 0  # bytes of its arguments sent through shared memory


class ChunkDispatched(NamedTuple):
    """A chunk was sent to a worker, which runs the chunks it holds in order."""
    chunk_id: int
    call_id: int
    pid: int              # the worker's pid
    time: float


class ResultsReceived(NamedTuple):
    """A worker's message with the outcomes of one or more chunks arrived.

    A worker sends the outcomes of several short chunks in one message;
    pickling it is one phase for all of them.
    """
    pid: int
    chunk_ids: tuple      # the chunks it carries, in the order they ran
    nbytes: int           # its size in the pipe (buffers sent through shared
                          # memory count by their name only)
    dump_started: float   # when the worker began pickling it (worker's clock)
    dump_seconds: float   # how long pickling it took
    time: float           # when the scheduler read it (and had unpickled it)
    shared_bytes: int = 0  # bytes of its results sent through shared memory
    load_seconds: float = 0.0  # how long the scheduler took to unpickle it


class ChunkFinished(NamedTuple):
    """A chunk's outcomes came back from its worker (fired before they reach the call).

    The worker unpickled the chunk from ``started`` for ``load_seconds``,
    then ran its tasks for ``run_seconds``; its results then waited in the
    worker until a ``ResultsReceived`` message carried them.

    ``describe(i)`` is the chunk's task *i* (relative to ``start``) as
    ``"func(args) [task n]"`` with short reprs of its arguments, for
    reports of the few chunks an instrument keeps: a repr costs, so call
    it only for those, and do not keep the method itself (it holds the
    chunk's arguments alive).
    """
    chunk_id: int
    call_id: int
    start: int            # position in its call of the first task reported
    tasks: int            # tasks reported: the chunk's, or fewer if the worker
                          # retired half-way (the rest is queued again)
    failed: int           # of those, how many raised
    pid: int
    started: float        # worker's clock
    load_seconds: float
    run_seconds: float
    time: float           # when the scheduler received it
    describe: Callable[[int], str] | None = None


class ChunkFailed(NamedTuple):
    """Tasks failed in the parent, without an outcome from a worker.

    Their results could not be unpickled, the pool broke, or the task was
    blamed for its worker's death (``WorkerLostError``,
    ``TaskTimeoutError``); *chunk_id* is None for a Pool's tasks that
    failed in the submitting thread (an argument that cannot be pickled,
    an ``imap`` input that raised; an Executor's future fails there
    without an event).
    """
    chunk_id: int | None
    call_id: int
    start: int            # position in its call of the first failed task
    tasks: int            # consecutive tasks failed from there
    error: BaseException  # what their results raise
    time: float


class TaskProgress(NamedTuple):
    """A task's ``polyproc.progress`` loop reported how far it has gone.

    Sent by the worker when the loop starts, at most every 0.1 s while it
    runs, and once more with *closed* when it ends (finished, raised or
    left).  A loop whose task or worker ends first gets no *closed*
    report: ``chunk_finished``, ``chunk_failed`` or ``worker_exited`` end it.
    Process pools only (a ``ThreadPool``'s task draws a plain bar).
    """
    pid: int              # the worker running the task
    chunk_id: int
    call_id: int
    position: int | None  # the task's position in its call (None: unknown,
                          # in a chunk of tasks too fast to be tracked one by one)
    bar: int              # numbers the loops of one worker process
    n: int                # items yielded so far
    total: int | None     # items in all, if known
    desc: str | None      # the loop's label
    closed: bool          # the loop ended
    time: float           # when the scheduler received it


class ChunkCancelled(NamedTuple):
    """A queued chunk will never run: its call was cancelled (Ctrl-C in the
    caller).  The chunks a worker held for it end with ``worker_exited``
    (the worker is killed, ``"cancelled"``) or, in a ThreadPool, finish."""
    chunk_id: int
    call_id: int
    start: int            # position in its call of the chunk's first task
    tasks: int
    time: float


class TaskRetried(NamedTuple):
    """A task blamed for its worker's death runs again (``retries=``)."""
    chunk_id: int         # the chunk it was in when the worker died
    call_id: int
    position: int         # the task's position in its call
    retries_left: int     # after this retry
    new_chunk_id: int     # the one-task chunk that runs it again
    pid: int              # the worker that died
    time: float


class TaskTimedOut(NamedTuple):
    """A task ran past its ``timeout=``: its worker is being killed.

    The worker's ``worker_exited`` (reason ``"timed out"``) and the task's
    ``chunk_failed`` (``TaskTimeoutError``) follow once it is dead.
    """
    chunk_id: int
    call_id: int
    position: int
    pid: int
    timeout: float
    started: float        # when the task started (worker's clock)
    time: float           # when the scheduler decided to kill it


class WorkerStarted(NamedTuple):
    """A worker is ready for tasks (its initializer, if any, has run).

    Its start-up took ``ready - spawned`` seconds: ``entered - spawned`` to
    start a process (a fork, or a new interpreter that imports the main
    module under spawn and forkserver), the rest in the initializer.
    """
    pid: int
    slot: int             # its place in the pool, 0 to processes - 1
    replaces: int | None  # the pid of the worker this one replaced in its slot
    spawned: float        # when the scheduler asked for it
    entered: float        # when the worker's loop began (worker's clock)
    ready: float          # when it was ready (worker's clock)
    time: float           # when the scheduler heard of it


# Why a worker exited (WorkerExited.reason).
ExitReason = Literal["lost", "timed out", "cancelled", "retired", "shut down",
                     "terminated"]


class WorkerExited(NamedTuple):
    """A worker process is gone.

    *reason* is ``"lost"`` when it died without the scheduler asking it to
    (a signal from outside such as the OOM killer's SIGKILL, a crash, an
    ``os._exit``, a failure while starting), ``"timed out"`` or
    ``"cancelled"`` when the scheduler killed it for a task's ``timeout=``
    or to cancel a call (Ctrl-C), ``"retired"`` after ``maxtasksperchild``
    or ``max_memory_per_child``, ``"shut down"`` when the pool closed and
    ``"terminated"`` when it was terminated or broke.  The chunks it held
    end here: what they had not reported is queued again as new chunks,
    except the task blamed for the death (see ``TaskRetried``,
    ``ChunkFailed``).
    """
    pid: int
    slot: int
    reason: ExitReason
    exitcode: int | None
    signal: str | None    # the signal's name ("SIGKILL") if one killed it
    was_ready: bool       # whether it had started (WorkerStarted was fired)
    chunk_ids: tuple      # the chunks it held
    time: float


# -- the interface ---------------------------------------------------------

class Instrument:
    """The interface of an instrument: override the events you want.

    Each method receives one immutable record (a ``NamedTuple``) and is
    called in the PoolScheduler thread (see the module docstring for the
    exceptions); it must return quickly.  A method that raises gets the
    instrument removed from the pool, and the error logged.
    """

    __slots__ = ()

    def chunk_queued(self, info: ChunkQueued) -> None:
        """A chunk of tasks waits for a worker."""

    def chunk_dispatched(self, info: ChunkDispatched) -> None:
        """A chunk was sent to a worker."""

    def results_received(self, info: ResultsReceived) -> None:
        """A message with the outcomes of one or more chunks arrived."""

    def chunk_finished(self, info: ChunkFinished) -> None:
        """A chunk's outcomes came back, with the times its worker measured."""

    def chunk_failed(self, info: ChunkFailed) -> None:
        """Tasks failed in the parent, without an outcome from a worker."""

    def task_progress(self, info: TaskProgress) -> None:
        """A task's ``polyproc.progress`` loop reported how far it has gone."""

    def chunk_cancelled(self, info: ChunkCancelled) -> None:
        """A queued chunk will never run: its call was cancelled."""

    def task_retried(self, info: TaskRetried) -> None:
        """A task blamed for its worker's death runs again."""

    def task_timed_out(self, info: TaskTimedOut) -> None:
        """A task ran past its timeout; its worker is being killed."""

    def worker_started(self, info: WorkerStarted) -> None:
        """A worker is ready for tasks."""

    def worker_exited(self, info: WorkerExited) -> None:
        """A worker process is gone, and why."""


_HOOKS = tuple(name for name in vars(Instrument) if not name.startswith("_"))


class Instruments(dict):
    """The instruments of one pool, by event: ``{hook name: (instrument, ...)}``.

    Empty, hence false, while no instrument is attached: the scheduler's
    guard ``if self._instruments:`` is then one C-level truth test and no
    event is built.  Only the hooks an instrument overrides are listed, so
    an event nobody watches is not built either.

    Copy-on-write: each value is a tuple, replaced whole under a lock by
    ``add_instrument``/``remove_instrument``, so an event fired in one
    thread iterates a snapshot while another thread adds or removes.

    The ``*_fired`` methods build an event from the scheduler's objects
    (``TaskChunk``, ``WorkerHandle``, ``Results``: read by attribute only,
    so that this module imports nothing of polyproc but, lazily, the
    transport's ``shared_bytes`` for a zero-copy payload) and call the hook;
    callers check ``if instruments:`` first.
    """

    __slots__ = ("_all", "_lock")

    def __init__(self, incoming: Iterable[Any] = ()):
        super().__init__()
        self._all: dict[Any, None] = {}
        self._lock = threading.Lock()
        for instrument in incoming:
            self.add_instrument(instrument)

    def add_instrument(self, instrument: Any) -> None:
        """Start calling *instrument*'s events; a no-op if it is attached already."""
        with self._lock:
            if instrument in self._all:
                return
            self._all[instrument] = None
            for hook in _HOOKS:
                method = getattr(instrument, hook, None)
                if method is None or getattr(method, "__func__", None) is vars(Instrument)[hook]:
                    continue  # not overridden: never called
                self[hook] = self.get(hook, ()) + (instrument,)

    def remove_instrument(self, instrument: Any) -> None:
        """Stop calling *instrument*.

        Raises ``KeyError`` if it is not attached: never added, removed
        already, or removed by the pool because it raised.
        """
        with self._lock:
            del self._all[instrument]
            for hook, attached in list(self.items()):
                if instrument in attached:
                    rest = tuple(i for i in attached if i is not instrument)
                    if rest:
                        self[hook] = rest
                    else:
                        del self[hook]

    def call(self, hook: str, info: Any) -> None:
        """Call *hook*(info) on each instrument that has it; remove those that raise."""
        for instrument in self.get(hook, ()):
            try:
                getattr(instrument, hook)(info)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt) and \
                        threading.current_thread() is threading.main_thread():
                    raise  # Ctrl-C in a caller's thread: the caller's, not the instrument's
                try:
                    self.remove_instrument(instrument)
                except KeyError:
                    pass  # another thread removed it meanwhile
                import logging
                logging.getLogger(INSTRUMENT_LOGGER_NAME).exception(
                    "Exception raised when calling %r on instrument %r. "
                    "Instrument has been removed from the pool.", hook, instrument)

    # -- events built from the scheduler's objects ------------------------
    def chunks_queued(self, chunks: Iterable, queued_at: float, requeued: bool) -> None:
        if "chunk_queued" not in self:
            return
        for c in chunks:
            payload = c.payload
            self.call("chunk_queued", ChunkQueued(
                c.chunk_id, id(c.sink), c.start, c.count, c.func_name,
                0 if payload is None else len(payload), requeued, queued_at,
                _shared_bytes(payload)))

    def chunks_dispatched(self, pid: int, chunks: Iterable, now: float) -> None:
        if "chunk_dispatched" not in self:
            return
        for c in chunks:
            self.call("chunk_dispatched", ChunkDispatched(c.chunk_id, id(c.sink), pid, now))

    def results_received(self, pid: int, results: Any, nbytes: int,
                         dump_started: float, dump_seconds: float, now: float,
                         shared_bytes: int = 0, load_seconds: float = 0.0) -> None:
        if "results_received" in self:
            self.call("results_received", ResultsReceived(
                pid, tuple(results.chunk_ids), nbytes, dump_started, dump_seconds, now,
                shared_bytes, load_seconds))

    def chunk_finished(self, pid: int, chunk: Any, results: Any, index: int,
                       values: list, errors: dict, now: float) -> None:
        """Chunk number *index* of a ``Results`` message came back as *values*, *errors*."""
        if "chunk_finished" in self:
            load_seconds = results.load_seconds[index]
            self.call("chunk_finished", ChunkFinished(
                chunk.chunk_id, id(chunk.sink), chunk.start, len(values), len(errors),
                pid, results.started[index], load_seconds,
                results.seconds[index] - load_seconds, now, chunk.describe_task))

    def chunk_ran(self, pid: int, chunk: Any, failed: int, started: float,
                  finished: float) -> None:
        """A chunk ran in this process (a ``ThreadPool``'s worker thread)."""
        if "chunk_finished" in self:
            self.call("chunk_finished", ChunkFinished(
                chunk.chunk_id, id(chunk.sink), chunk.start, chunk.count, failed,
                pid, started, 0.0, finished - started, finished, chunk.describe_task))

    def tasks_failed(self, chunk_id: int | None, sink: Any, start: int, tasks: int,
                     error: BaseException, now: float) -> None:
        if "chunk_failed" in self:
            self.call("chunk_failed", ChunkFailed(chunk_id, id(sink), start, tasks,
                                                  error, now))

    def task_progress(self, pid: int, chunk: Any, position: int | None, report: Any,
                      now: float) -> None:
        """*report* (a ``messages.TaskProgress``) came from worker *pid*, running
        the task at *position* of *chunk*'s call."""
        if "task_progress" in self:
            self.call("task_progress", TaskProgress(
                pid, chunk.chunk_id, id(chunk.sink), position, report.bar, report.n,
                report.total, report.desc, report.closed, now))

    def chunks_cancelled(self, chunks: Iterable, now: float) -> None:
        if "chunk_cancelled" not in self:
            return
        for c in chunks:
            self.call("chunk_cancelled", ChunkCancelled(c.chunk_id, id(c.sink), c.start,
                                                        c.count, now))

    def task_blamed(self, pid: int, chunk: Any, task: int, error: BaseException | None,
                    retry: Any, now: float) -> None:
        """Task *task* of *chunk* killed worker *pid*: it fails with *error*, or runs
        again as the chunk *retry*."""
        if error is not None:
            self.tasks_failed(chunk.chunk_id, chunk.sink, chunk.start + task, 1, error, now)
        elif "task_retried" in self:
            self.call("task_retried", TaskRetried(
                chunk.chunk_id, id(chunk.sink), chunk.start + task, retry.retries,
                retry.chunk_id, pid, now))

    def task_timed_out(self, pid: int, chunk: Any, task: int, started: float,
                       now: float) -> None:
        if "task_timed_out" in self:
            self.call("task_timed_out", TaskTimedOut(
                chunk.chunk_id, id(chunk.sink), chunk.start + task, pid, chunk.timeout,
                started, now))

    def worker_started(self, worker: Any, entered: float, ready: float, now: float) -> None:
        if "worker_started" in self:
            self.call("worker_started", WorkerStarted(
                worker.process.pid, worker.slot, worker.replaces, worker.spawned,
                entered, ready, now))

    def worker_exited(self, worker: Any, exitcode: int | None, held: Iterable,
                      terminating: bool, now: float) -> None:
        """*worker* (a ``WorkerHandle``) is gone, holding the chunks *held*."""
        if "worker_exited" in self:
            self.call("worker_exited", WorkerExited(
                worker.process.pid, worker.slot, _exit_reason(worker, exitcode, terminating),
                exitcode, _signal_name(exitcode), worker.ready,
                tuple(c.chunk_id for c in held), now))


def _shared_bytes(payload: Any) -> int:
    """Bytes a chunk's payload carries through shared memory."""
    # A zero-copy payload starts with 0xff (serialization.MAGIC), which no
    # pickle does: one byte read for the usual plain pickle, and the
    # transport layer is imported only when a payload needs it.
    if not payload or payload[0] != 0xFF:
        return 0
    from .._transport.serialization import shared_bytes
    return shared_bytes(payload)


def _exit_reason(worker: Any, exitcode: int | None, terminating: bool) -> ExitReason:
    """Why *worker* exited, from what the scheduler knew of it (see ``WorkerExited``)."""
    if worker.retiring:
        return "retired"
    if worker.shutdown_sent and exitcode == 0:
        return "shut down"
    if worker.cancelled_sinks:
        return "cancelled"
    if worker.timed_out is not None:
        return "timed out"
    if terminating or worker.shutdown_sent:
        return "terminated"
    return "lost"


def _signal_name(exitcode: int | None) -> str | None:
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"
