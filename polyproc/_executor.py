"""``polyproc.Executor``: a ``concurrent.futures.Executor`` on the Pool's scheduler.

Why not build on ``concurrent.futures.ProcessPoolExecutor``?  Its design
fails the project's bar in three places: one worker that dies (SIGKILL, the
OOM killer, a segfault, ``os._exit``) breaks the whole executor, failing
every pending future with ``BrokenProcessPool``; all workers share one call
queue, so a worker dying while holding its lock can wedge the rest; and a
trivial task costs 75 to 240 µs with ``chunksize=1`` on the 2-core
development machine (polyproc: about 20 µs, benchmarks/bench_executor.py).  The Pool's
``ProcessScheduler`` (_scheduler.py) already solves all three: a pipe per
worker, blame on exactly the task that was running when a worker died,
``timeout=``/``retries=`` per task, and batching that makes tiny tasks
cheap.  This module only adapts ``concurrent.futures``' interface to it.

Data flow of a task::

  caller thread                 | PoolScheduler thread          | worker processes
  (Executor, this module)       | (ProcessScheduler._run)       | (_worker.py)
                                |                               |
  submit(fn, *args) / map       |                               |
   -> TaskChunk, args pickled   |                               |
      here (an error fails it)  |                               |
   -> _ExecutorCore.enqueue:    |                               |
      window has room? ---yes---+-> ProcessScheduler.submit ----+-> run tasks
        | no                    |                               |
        v                       |                               |
      _ExecutorCore.waiting     |   _FutureSink.deliver <-------+-- results
      (deque of TaskChunks) <---+-- _ExecutorCore.settle:       |
                                |     tops the window up from   |
  future.result() <-------------+--   waiting, then sets the    |
  (concurrent.futures.Future)   |     Future's result/exception |

The window.  A chunk handed to the scheduler is *running* as far as its
Future is concerned (``set_running_or_notify_cancel()`` is called at the
hand-over, as the stdlib calls it when a work item enters its call queue):
from then on ``cancel()`` returns False and the task will run.  Chunks
beyond the window wait in ``_ExecutorCore.waiting``, in the caller's
process, where ``cancel()`` succeeds and a cancelled task never runs.  The
window is sized from the scheduler's measured time per task of the
function (``task_seconds``): about ``WINDOW_SECONDS`` of work per worker,
at least ``MIN_WINDOW_PER_WORKER`` chunks per worker (one running, one
prefetched) and at most ``MAX_WINDOW_PER_WORKER``.  Slow tasks therefore
behave as in the stdlib (few in flight, the rest cancellable), and tiny
tasks get a window deep enough for the scheduler to batch hundreds of them
per message, which is where the speed comes from.

Completion runs in the PoolScheduler thread: done-callbacks (and
``asyncio.wrap_future``'s, used by ``loop.run_in_executor``) run there, as
they run in the stdlib's executor manager thread.  A callback that blocks
stalls the executor, as it does in the stdlib; one that raises, even
``SystemExit``, is logged and the next callbacks run
(``_ExecutorFuture._invoke_callbacks``).

Reused from the stdlib: ``concurrent.futures.Future`` (its states,
``wait()``/``as_completed()`` waiters, done callbacks, and what asyncio
expects; subclassed only so that ``cancel()`` notifies waiters at once, see
``_ExecutorFuture``) and the ``concurrent.futures.Executor`` base class
(context manager, ``isinstance`` checks).  ``map`` follows
``Executor.map``/``ProcessPoolExecutor.map`` (eager submission, results in
order, an overall ``timeout``, the rest cancelled when the generator is
closed) with one chunk of the scheduler per ``chunksize`` items instead of a
``_process_chunk`` call.  The interpreter-exit hook mirrors
``concurrent.futures.process._python_exit``: work submitted to an executor
that was never shut down still completes before the interpreter exits.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from concurrent.futures import Executor as _StdExecutor
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from . import _exceptions
from . import _messages as m
from . import _ownership
from . import _serialization
from ._cpu import process_cpu_count
from ._exceptions import (ExecutorInitializerError, ExecutorUnloadableError,
                          ExecutorWorkerLostError, InitializerError,
                          UnloadableError, WorkerLostError)
from ._instruments import Instrument, Instruments
from ._pool import _check_options
from ._tasks import TaskChunk, function_name, make_chunk

if TYPE_CHECKING:
    from ._scheduler import ProcessScheduler

__all__ = ["Executor"]

# The stdlib's logger for exceptions raised by done-callbacks.
_LOGGER = logging.getLogger("concurrent.futures")

WINDOW_SECONDS = 0.05        # estimated work in flight per worker
MIN_WINDOW_PER_WORKER = 2    # one running, one prefetched (the stdlib keeps workers + 1)
MAX_WINDOW_PER_WORKER = 512  # two of the scheduler's full batches (MAX_BATCH_CHUNKS)


def _for_executor(exc: BaseException) -> BaseException:
    """The exception a future raises for *exc* from the scheduler.

    What stdlib code written for ``ProcessPoolExecutor`` catches: a lost
    worker, a failed initializer and a task or result that could not be
    unpickled become the subclasses that are also ``BrokenProcessPool``;
    a result that could not be pickled raises what pickle raised (the
    Pool's ``MaybeEncodingError`` carries it).
    """
    if isinstance(exc, WorkerLostError) and not isinstance(exc, ExecutorWorkerLostError):
        new: BaseException = ExecutorWorkerLostError(
            exc.args[0] if exc.args else "", exc.pid, exc.exitcode, exc.task)
    elif isinstance(exc, InitializerError) and not isinstance(exc, ExecutorInitializerError):
        new = ExecutorInitializerError(*exc.args)
    elif isinstance(exc, UnloadableError) and not isinstance(exc, ExecutorUnloadableError):
        new = ExecutorUnloadableError(*exc.args)
    elif _is_unpicklable_result(exc):
        reason = getattr(exc, "reason", None)  # None: it could not cross
        if reason is None:
            return exc
        new = reason
    else:
        return exc
    new.__cause__ = exc.__cause__
    return new


def _is_unpicklable_result(exc: BaseException) -> bool:
    # Looked up, not imported: the class is built on first use (it costs an
    # import of multiprocessing.pool), and an instance can only exist here
    # once it has been.
    cls = vars(_exceptions).get("UnpicklableResultError")
    return cls is not None and isinstance(exc, cls)


class _ExecutorFuture(Future):
    """A ``concurrent.futures.Future`` whose ``cancel()`` is seen by ``wait()`` at once.

    A plain Future that is cancelled goes to ``CANCELLED``; ``wait()`` and
    ``as_completed()`` only count it once the executor has called
    ``set_running_or_notify_cancel()`` on it, which the stdlib's executor
    does when the work item would have entered its call queue, and this one
    would do when the chunk would have entered the window.  Until then a
    ``wait()`` on it blocks, though nothing will ever run.  Here ``cancel()``
    does that notification itself.

    ``claimed`` (guarded by the core's lock) says who has called
    ``set_running_or_notify_cancel()``: exactly one of ``cancel()`` or the
    core (hand-over, shutdown, abort) does, since a second call raises.
    """

    _done_callbacks: list[Callable[[Future], object]]  # the stdlib Future's, untyped there

    def __init__(self, core: "_ExecutorCore"):
        super().__init__()
        self._core = core
        self.claimed = False

    def cancel(self) -> bool:
        """Cancel the call if it has not been handed to a worker yet.

        Returns False if the call is running (handed to the scheduler: see
        the module docstring) or finished; True if it is cancelled, and then
        it never runs.
        """
        if not super().cancel():
            return False
        with self._core.lock:
            if not self.claimed:
                self.claimed = True
                self.set_running_or_notify_cancel()  # CANCELLED_AND_NOTIFIED
        return True

    def _invoke_callbacks(self) -> None:
        # Done-callbacks run in the PoolScheduler thread when a result
        # arrives.  The stdlib's Future logs an Exception from one and goes
        # on; anything else (a callback that raises SystemExit) would end
        # that thread and break the executor, so it is logged the same way
        # there.  In the main thread (a callback run by cancel()) it still
        # propagates, as in the stdlib, so that Ctrl-C is never swallowed.
        for callback in self._done_callbacks:
            try:
                callback(self)
            except Exception:
                _LOGGER.exception("exception calling callback for %r", self)
            except BaseException:
                if threading.current_thread() is threading.main_thread():
                    raise
                _LOGGER.exception("exception calling callback for %r", self)

    def result(self, timeout: float | None = None) -> Any:
        """``Future.result``; raises ``InheritedPoolError`` at once in a forked
        child while the call is unfinished (nothing there would finish it)."""
        if self._core.pid != _ownership.pid and not self.done():
            _ownership.check_owner(self._core.pid, "this Executor's future")
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """``Future.exception``; in a forked child as ``result()``."""
        if self._core.pid != _ownership.pid and not self.done():
            _ownership.check_owner(self._core.pid, "this Executor's future")
        return super().exception(timeout)

    def claim(self) -> bool:
        """Mark running for a hand-over (holding the core's lock).

        Returns False if the future was cancelled: the call must not run.
        """
        if self.claimed:
            return False
        self.claimed = True
        return self.set_running_or_notify_cancel()


class _FutureSink:
    """Receives one chunk's outcomes from the scheduler and completes its Future.

    A chunk of one task (``submit``) completes with the task's value; a
    chunk of several (``map`` with ``chunksize > 1``) completes with the
    list of values, or with the exception of its lowest-index failed task,
    as the stdlib's ``_process_chunk`` does.  The scheduler may deliver a
    chunk in several parts (a worker died or retired half-way through it).
    """

    __slots__ = ("core", "future", "start", "count", "as_list", "values",
                 "first_error", "remaining")

    def __init__(self, core: "_ExecutorCore", future: _ExecutorFuture, start: int = 0,
                 count: int = 1, as_list: bool = False):
        self.core = core
        self.future = future
        self.start = start
        self.count = count
        self.as_list = as_list  # complete with a list even for one task
        self.values: list | None = None
        self.first_error: tuple[int, BaseException] | None = None
        self.remaining = count

    def deliver(self, start: int, values: list, errors: dict) -> None:
        if not self.as_list:  # submit() and map(chunksize=1): the hot path
            if errors:
                self.core.settle(self, None, errors[min(errors)])
            else:
                self.core.settle(self, values[0], None)
            return
        with self.core.lock:
            if self.remaining <= 0:
                return
            if self.values is None:
                self.values = [None] * self.count
            offset = start - self.start
            self.values[offset:offset + len(values)] = values
            if errors:
                index = offset + min(errors)
                if self.first_error is None or index < self.first_error[0]:
                    self.first_error = (index, errors[min(errors)])
            self.remaining -= len(values)
            if self.remaining > 0:
                return
        if self.first_error is not None:
            self.core.settle(self, None, self.first_error[1])
        else:
            self.core.settle(self, self.values, None)



def _set_outcome(future: Future, value: Any, exc: BaseException | None) -> None:
    try:
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(_for_executor(exc))
    except InvalidStateError:
        pass  # cancelled, or already set by an abort racing with a delivery


class _ExecutorCore:
    """The state an Executor shares with its sinks and the PoolScheduler thread.

    Kept apart from the ``Executor`` object so that nothing the scheduler
    thread holds refers to the Executor: an Executor dropped without
    ``shutdown()`` is garbage-collected, and its finalizer closes this core.

    ``lock`` (reentrant: handing a chunk to a scheduler that just broke
    fails it on the spot, which settles its sink in the same thread) guards
    ``waiting``, ``in_flight`` and ``shut_down``.
    """

    def __init__(self, workers: int):
        self.lock = threading.RLock()
        self.workers = workers
        self.waiting: collections.deque[TaskChunk] = collections.deque()
        self.in_flight: set[_FutureSink] = set()  # handed to the scheduler, not settled
        self.shut_down = False
        # Set by Executor right after this core exists (the scheduler needs
        # the core's abort_all to be built).
        self.backend: ProcessScheduler = None  # type: ignore[assignment]
        self.pid = _ownership.pid  # forked children inherit a copy; it is not theirs

    def window(self, chunk: TaskChunk) -> int:
        """How many chunks like *chunk* may be in the scheduler's hands."""
        per_task = self.backend.task_seconds(chunk.func)
        if per_task is None:
            per_worker = MIN_WINDOW_PER_WORKER
        else:
            per_chunk = max(per_task * chunk.count, 1e-9)
            per_worker = min(MAX_WINDOW_PER_WORKER,
                             max(MIN_WINDOW_PER_WORKER, int(WINDOW_SECONDS / per_chunk)))
        return per_worker * self.workers

    # -- caller threads ---------------------------------------------------
    def enqueue(self, chunks: list[TaskChunk]) -> None:
        """Hand *chunks* to the scheduler, or queue them beyond the window.

        Raises ``RuntimeError`` after shutdown and the initializer's error
        once the scheduler is broken (the stdlib raises ``BrokenProcessPool``
        there); nothing is queued then.
        """
        with self.lock:
            if self.backend.broken is not None:
                raise _for_executor(self.backend.broken)
            if self.shut_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            send = []
            for chunk in chunks:
                if self.waiting or len(self.in_flight) >= self.window(chunk):
                    self.waiting.append(chunk)
                else:
                    chunk.sink.future.claim()  # a new future: not cancelled yet
                    self.in_flight.add(chunk.sink)
                    send.append(chunk)
            # Under the lock, so that shutdown() cannot close the scheduler
            # between the in_flight bookkeeping and the hand-over.
            if send:
                self.backend.submit(send)

    def enqueue_one(self, chunk: TaskChunk) -> None:
        """``enqueue([chunk])``, without the lists (the path of ``submit``)."""
        with self.lock:
            if self.backend.broken is not None:
                raise _for_executor(self.backend.broken)
            if self.shut_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self.waiting or len(self.in_flight) >= self.window(chunk):
                self.waiting.append(chunk)
                return
            chunk.sink.future.claim()  # a new future: not cancelled yet
            self.in_flight.add(chunk.sink)
            self.backend.submit([chunk])

    def owned(self) -> bool:
        """Whether this process made the executor (not a fork child's copy)."""
        return self.pid == _ownership.pid

    def shutdown(self, cancel_futures: bool) -> None:
        if not self.owned():
            # A fork child's copy (shutdown(), its finalizer at exit): mark
            # it, and leave the parent's scheduler and workers alone.
            self.shut_down = True
            return
        with self.lock:
            self.shut_down = True
            cancelled = list(self.waiting) if cancel_futures else []
            if cancel_futures:
                self.waiting.clear()
        for chunk in cancelled:
            chunk.sink.future.cancel()  # notifies wait() and as_completed() too
            chunk.release()
        # The scheduler keeps running what it holds and what settle() tops
        # up from ``waiting``; it stops its workers once it is all done.
        self.backend.close()

    # -- the PoolScheduler thread (and aborts) ---------------------------------
    def settle(self, sink: _FutureSink, value: Any, exc: BaseException | None) -> None:
        """*sink*'s chunk is finished: refill the window, then complete its future.

        Exactly one settle per sink sets its future: the one that takes it
        out of ``in_flight`` (a late delivery after an abort finds it gone).
        """
        with self.lock:
            try:
                self.in_flight.remove(sink)
            except KeyError:
                return
            if self.waiting:
                # Refill in steps of a quarter window, not one chunk per
                # settle: one hand-over (and one wake-up of the scheduler)
                # then moves hundreds of tiny tasks.  Small windows refill
                # at every settle, so slow tasks keep every worker busy.
                window = self.window(self.waiting[0])
                if (len(self.in_flight) <= window - max(1, window // 4)
                        or self.backend.broken is not None):
                    self._top_up(window)
        _set_outcome(sink.future, value, exc)

    def _top_up(self, window: int) -> None:
        """Move chunks from ``waiting`` into the window (holding ``lock``)."""
        broken = self.backend.broken
        send = []
        while self.waiting and (broken is not None or len(self.in_flight) < window):
            chunk = self.waiting.popleft()
            if not chunk.sink.future.claim():
                chunk.release()  # cancelled while it waited: it never runs
                continue
            if broken is not None:
                chunk.release()
                _set_outcome(chunk.sink.future, None, broken)
                continue
            self.in_flight.add(chunk.sink)
            send.append(chunk)
        if send:
            self.backend.submit(send)

    def abort_all(self, exc: BaseException) -> None:
        """The scheduler broke or was terminated: fail every unfinished future."""
        with self.lock:
            sinks = list(self.in_flight)
            self.in_flight.clear()
            for chunk in self.waiting:
                chunk.release()
                if chunk.sink.future.claim():
                    sinks.append(chunk.sink)
            self.waiting.clear()
        for sink in sinks:
            _set_outcome(sink.future, None, exc)


# Every executor's core, for the interpreter-exit hook: weak, so that a core
# goes once its executor was dropped and its PoolScheduler thread has ended.
_live_cores: "weakref.WeakSet[_ExecutorCore]" = weakref.WeakSet()


def _python_exit() -> None:
    """Let submitted work finish before the interpreter exits (as the stdlib does).

    Except when the program is exiting because of Ctrl-C (an uncaught
    ``KeyboardInterrupt``, which the interpreter has stored in
    ``sys.last_value`` by the time this hook runs): then waiting for the
    pending work is what makes the stdlib's executor hang on Ctrl-C, so
    calls that have not started are cancelled and the workers are killed;
    running calls fail with ``ProcessError``.
    """
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    # A forked child (a worker, a Process) runs this hook too when it exits
    # (``BaseProcess._bootstrap`` calls ``threading._shutdown``), with a copy
    # of its parent's cores: those are the parent's to shut down, not its own.
    cores = [core for core in list(_live_cores) if core.owned()]
    for core in cores:
        core.shutdown(cancel_futures=interrupted)
        if interrupted:
            core.backend.terminate()
    for core in cores:
        core.backend.join()


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]


class Executor(_StdExecutor):
    """A ``concurrent.futures.Executor`` that runs calls in worker processes.

    ``Executor(max_workers=None, mp_context=None, initializer=None,
    initargs=(), *, max_tasks_per_child=None)`` as
    ``concurrent.futures.ProcessPoolExecutor``, plus ``max_memory_per_child=``
    (bytes of resident memory after which a worker is replaced before its
    next task).  It runs on polyproc's pool scheduler: a worker that dies
    fails only the future of the task it was running, with
    ``WorkerLostError`` (also a ``BrokenProcessPool``), and is replaced;
    every other future completes.  ``options(timeout=, retries=)`` gives
    per-task options: seconds a task may run (``TaskTimeoutError``, the
    worker is replaced) and further runs of a task whose worker died.

    Python 3.14's ``terminate_workers()``, ``kill_workers()`` and
    ``map(..., buffersize=)`` are there on every Python.  ``instruments=``
    (and ``add_instrument``/``remove_instrument``) attach
    ``polyproc.Instrument`` objects that watch the executor work.

    Differences from ``ProcessPoolExecutor``, none of which changes what
    working stdlib code means: ``max_tasks_per_child`` works with the fork
    start method too, and without ``mp_context`` the default context is
    used (the stdlib switches to spawn); workers start with the executor.
    """

    def __init__(self, max_workers: int | None = None, mp_context=None,
                 initializer: Callable | None = None, initargs: Iterable = (), *,
                 max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None,
                 instruments: Iterable[Instrument] = ()):
        from .process import current_process
        if getattr(current_process(), "_inheriting", False):
            from ._child import refuse_start_while_importing_main
            refuse_start_while_importing_main()
        if max_workers is None:
            # os.process_cpu_count() as the stdlib from 3.13, on every
            # Python, capped by a container's CPU quota (see _cpu).
            max_workers = process_cpu_count() or 1
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if max_memory_per_child is not None and max_memory_per_child <= 0:
            raise ValueError("max_memory_per_child must be a positive number of bytes or None")
        if mp_context is None:
            from .context import _default_context
            mp_context = _default_context.get_context()
        from ._scheduler import ProcessScheduler
        self._max_workers = max_workers
        self._mp_context = mp_context
        core = _ExecutorCore(max_workers)
        self._instruments = Instruments(instruments)
        core.backend = ProcessScheduler(mp_context, max_workers, initializer, initargs,
                                        max_tasks_per_child, max_memory_per_child,
                                        core.abort_all, self._instruments)
        self._core = core
        _live_cores.add(core)
        # Dropped without shutdown(): let its work finish, then stop its workers.
        weakref.finalize(self, core.shutdown, False)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)`` to run in a worker; return a Future.

        Never blocks.  Raises ``RuntimeError`` after ``shutdown()``, the
        initializer's error once the executor is broken, and
        ``InheritedPoolError`` (a ``RuntimeError``) in a child made by fork
        after the executor was.  If *fn*, *args* or *kwargs* cannot be
        pickled, the future fails with what pickle raised, as
        ``ProcessPoolExecutor``'s does.  Every keyword argument goes to
        *fn*, as with ``ProcessPoolExecutor``; polyproc's per-task options
        are set with ``options()``.
        """
        return self._submit(fn, args, kwargs, None, 0)

    def add_instrument(self, instrument: Instrument) -> None:
        """Start calling *instrument*'s events (a no-op if attached already).

        See ``polyproc.Instrument``: events are called in the executor's
        scheduler thread and must be quick; one that raises gets its
        instrument removed (and the error logged on ``polyproc.Instrument``).
        """
        self._instruments.add_instrument(instrument)

    def remove_instrument(self, instrument: Instrument) -> None:
        """Stop calling *instrument*; ``KeyError`` if it is not attached
        (never added, or removed because it raised)."""
        self._instruments.remove_instrument(instrument)

    def options(self, *, timeout: float | None = None,
                retries: int = 0) -> "ExecutorOptions":
        """This executor with per-task options for the calls made through it.

        ``ex.options(timeout=30, retries=2).submit(fn, x)``: *timeout* is the
        seconds the task may run (then ``TaskTimeoutError``, and its worker
        is replaced), *retries* the further runs of a task whose worker
        died.  A separate method, not extra keywords of ``submit``, so that
        a function's own ``timeout=`` or ``retries=`` argument keeps reaching
        the function as it does with the stdlib.
        """
        _check_options(timeout, retries)
        return ExecutorOptions(self, timeout, retries)

    def _submit(self, fn: Callable, args: tuple, kwargs: dict,
                timeout: float | None, retries: int) -> Future:
        # The hot path of "10,000 submits": _submit_chunks inlined for one call.
        core = self._core
        if core.pid != _ownership.pid:
            _ownership.check_owner(core.pid, "this Executor")
        if core.shut_down:  # checked again under the lock by enqueue()
            raise RuntimeError("cannot schedule new futures after shutdown")
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        future = _ExecutorFuture(core)
        try:
            chunk = make_chunk(_serialization.dumps_function(fn), function_name(fn),
                               m.CALL_APPLY, [(args, kwargs)], 0,
                               _FutureSink(core, future), timeout, retries)
        except Exception as exc:  # could not be pickled
            _fail_unsent(core, future, exc)
            return future
        try:
            core.enqueue_one(chunk)
        except BaseException:
            chunk.release()
            raise
        return future

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None,
            retries: int = 0) -> Iterator:
        """Return an iterator equivalent to ``map(fn, *iterables)``, run in workers.

        Every call is submitted at once, *chunksize* calls per scheduler
        chunk.  The iterator yields results in order; it raises a call's
        exception at that call's position (what pickle raised, for a call
        whose arguments cannot be pickled, as the stdlib's does), and
        ``concurrent.futures.TimeoutError`` if a result is not there
        *timeout* seconds after ``map()`` was called.  Leaving the iterator
        early cancels the calls that have not started.

        *buffersize* (Python 3.14's, on every Python): at most that many
        chunks are submitted and not yet yielded; the *iterables* are read
        only as results are consumed, so they may be endless.  Raises
        ``TypeError`` if it is not an int, ``ValueError`` if below 1.
        """
        return self._map(fn, iterables, timeout, chunksize, None, retries, buffersize)

    def _map(self, fn: Callable, iterables: tuple, timeout: float | None,
             chunksize: int, task_timeout: float | None, retries: int,
             buffersize: int | None = None) -> Iterator:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        _check_buffersize(buffersize)
        end_time = None if timeout is None else time.monotonic() + timeout
        if buffersize is not None:
            return self._buffered_map(fn, iterables, end_time, chunksize,
                                      task_timeout, retries, buffersize)
        items = list(zip(*iterables))
        pieces = [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
        futures = self._submit_chunks(fn, m.CALL_STAR, pieces, chunksize, task_timeout,
                                      retries)
        return _chained_results(futures, end_time, chunksize > 1)

    def _buffered_map(self, fn: Callable, iterables: tuple, end_time: float | None,
                      chunksize: int, task_timeout: float | None, retries: int,
                      buffersize: int) -> Iterator:
        """``map`` with ``buffersize``: ``Executor.map`` of 3.14, per chunk.

        The first *buffersize* chunks are submitted here (so the first
        unpicklable argument among them raises here); afterwards each
        ``next()`` submits the next chunk before it waits for the oldest
        result, so at most *buffersize* chunks are submitted and not yet
        yielded, and the input is never read further ahead than that.
        """
        pieces = _batched(zip(*iterables), chunksize)
        first = list(itertools.islice(pieces, buffersize))
        futures = collections.deque(self._submit_chunks(
            fn, m.CALL_STAR, first, chunksize, task_timeout, retries))
        # Weak, as the stdlib's: the iterator must not keep the executor alive.
        executor_ref = weakref.ref(self)
        submitted = [len(first)]

        def refill() -> None:
            executor = executor_ref()
            piece = next(pieces, None) if executor is not None else None
            if executor is None or piece is None:
                return
            futures.extend(executor._submit_chunks(
                fn, m.CALL_STAR, [piece], chunksize, task_timeout, retries,
                first=submitted[0] * chunksize))
            submitted[0] += 1

        return _chained_results(futures, end_time, chunksize > 1, refill)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Free the workers once the submitted calls are done.

        Later ``submit``/``map`` calls raise ``RuntimeError``.  With
        *cancel_futures*, calls that have not started are cancelled (their
        futures' ``cancel()`` returns True and they never run).  With
        *wait*, blocks until every call that was not cancelled has finished
        and the workers have exited.  In a child made by fork it only
        marks the child's copy shut down: the workers are the parent's.
        """
        self._core.shutdown(cancel_futures)
        if wait and self._core.owned():
            self._core.backend.join()

    def terminate_workers(self) -> None:
        """Stop every worker now with SIGTERM (Python 3.14's method, on every Python).

        As ``ProcessPoolExecutor.terminate_workers``: the executor is shut
        down with ``cancel_futures=True`` (calls not yet handed to a worker
        are cancelled and never run), the futures of calls that were
        running fail with ``BrokenProcessPool``, and later ``submit``/``map``
        calls raise ``RuntimeError``.  A worker that ignores SIGTERM is
        killed (SIGKILL) half a second later, where the stdlib would leave
        it running.  Returns once the workers are gone.
        """
        self._force_shutdown("terminate")

    def kill_workers(self) -> None:
        """Stop every worker now with SIGKILL (Python 3.14's method, on every Python).

        As ``terminate_workers()``, with SIGKILL.
        """
        self._force_shutdown("kill")

    def _force_shutdown(self, operation: str) -> None:
        core = self._core
        processes = list(self._processes.values())
        core.shutdown(cancel_futures=True)
        from concurrent.futures.process import BrokenProcessPool
        # Failed first: a result that still arrives from a worker being
        # stopped is then ignored, as the stdlib's manager thread would.
        core.abort_all(BrokenProcessPool(
            f"the executor's workers were stopped by {operation}_workers() "
            f"while this call was running"))
        if operation == "kill":
            # The scheduler must see TERMINATE before it sees a worker die,
            # or it would requeue that worker's tasks and start another.
            from ._scheduler import TERMINATE
            core.backend.state = TERMINATE
            for process in processes:
                try:
                    process.kill()
                except (OSError, ValueError):
                    pass
        # SIGTERM to whoever is left, SIGKILL after a grace period; joins.
        core.backend.terminate()

    def __reduce__(self):
        raise TypeError("Executor objects cannot be passed between processes or pickled")

    @property
    def _processes(self) -> dict:
        """``{pid: process}`` of the current workers (as the stdlib's private attribute)."""
        return {w.process.pid: w.process
                for w in list(getattr(self._core.backend, "_workers", {}).values())}

    # -- internals ----------------------------------------------------------
    def _submit_chunks(self, fn: Callable, call: int, pieces: list[list], chunksize: int,
                       timeout: float | None, retries: int,
                       first: int = 0) -> list[Future]:
        core = self._core
        _ownership.check_owner(core.pid, "this Executor")
        if core.shut_down:  # checked again under the lock by enqueue()
            raise RuntimeError("cannot schedule new futures after shutdown")
        _check_options(timeout, retries)
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        fn_name = function_name(fn)
        new_futures = [_ExecutorFuture(core) for _ in pieces]
        futures: list[Future] = list(new_futures)
        try:
            fn_blob = _serialization.dumps_function(fn)
        except Exception as exc:  # every call fails with it
            for future in new_futures:
                _fail_unsent(core, future, exc)
            return futures
        chunks: list[TaskChunk] = []
        try:
            for index, (piece, future) in enumerate(zip(pieces, new_futures)):
                start = first + index * chunksize
                sink = _FutureSink(core, future, start, len(piece),
                                   as_list=chunksize > 1)
                try:
                    chunks.append(make_chunk(fn_blob, fn_name, call, piece,
                                             start, sink, timeout, retries))
                except Exception as exc:  # could not be pickled
                    _fail_unsent(core, future, exc)
            core.enqueue(chunks)
        except BaseException:
            for chunk in chunks:
                chunk.release()
            raise
        return futures


def _fail_unsent(core: _ExecutorCore, future: _ExecutorFuture,
                 exc: BaseException) -> None:
    """Fail *future*, whose call could not be pickled, with what pickle raised.

    As ``ProcessPoolExecutor``: ``result()`` raises it, ``submit`` returns.
    A broken executor raises its error at the call instead, as there.
    """
    if core.backend.broken is not None:
        raise _for_executor(core.backend.broken)
    future.set_exception(exc)


def _check_buffersize(buffersize: int | None) -> None:
    """``Executor.map``'s checks of *buffersize* (Python 3.14), same errors."""
    if buffersize is not None and not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")


def _batched(iterable: Iterable, n: int) -> Iterator[list]:
    """Lists of *n* consecutive items (``itertools.batched`` of 3.12, lazily)."""
    it = iter(iterable)
    while piece := list(itertools.islice(it, n)):
        yield piece


def _chained_results(futures: list[Future] | collections.deque, end_time: float | None,
                     chunked: bool, refill: Callable[[], None] | None = None) -> Iterator:
    """The iterator ``map`` returns (``Executor.map``'s ``result_iterator``).

    No reference to a consumed future or to a result already yielded stays
    in this generator's frame while it is suspended (as in the stdlib): the
    futures are taken from the front of a deque, a chunk's list of results
    is emptied as it is yielded, and a single result is yielded straight
    from the call that fetched it, never from a local variable.

    *refill*, with ``buffersize``: called before each wait, it submits the
    next chunk (appending its future to *futures*, a deque).
    """
    if not isinstance(futures, collections.deque):
        futures = collections.deque(futures)
    try:
        while futures:
            if refill is not None:
                refill()
            if chunked:
                values = _result_or_cancel(futures.popleft(), end_time)
                values.reverse()
                while values:
                    yield values.pop()
            else:
                yield _result_or_cancel(futures.popleft(), end_time)
    finally:
        for future in futures:
            future.cancel()


def _result_or_cancel(future: Future, end_time: float | None) -> Any:
    """*future*'s result, waiting until *end_time* at most; cancel it on failure."""
    try:
        if end_time is None:
            return future.result()
        return future.result(end_time - time.monotonic())
    except BaseException:
        future.cancel()
        raise


class ExecutorOptions:
    """An Executor seen with per-task options (``Executor.options()``)."""

    def __init__(self, executor: Executor, timeout: float | None, retries: int):
        self._executor = executor
        self._timeout = timeout
        self._retries = retries

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """``Executor.submit`` with these options."""
        return self._executor._submit(fn, args, kwargs, self._timeout, self._retries)

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None) -> Iterator:
        """``Executor.map`` with these options; *timeout* is map's overall one."""
        return self._executor._map(fn, iterables, timeout, chunksize, self._timeout,
                                   self._retries, buffersize)
