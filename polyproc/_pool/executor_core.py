"""The state an ``Executor`` shares with its backend: the window of work, the futures.

The window.  A chunk handed to the scheduler is *running* as far as its
Future is concerned (``set_running_or_notify_cancel()`` is called at the
hand-over, as the stdlib calls it when a work item enters its call queue):
from then on ``cancel()`` returns False and the task will run.  Chunks
beyond the window wait in ``ExecutorCore.waiting``, in the caller's
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
(``ExecutorFuture._invoke_callbacks``).
"""
from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import Future, InvalidStateError
from typing import Any, Callable

from .. import _exceptions
from . import backend as _backends
from . import ownership as _ownership
from .._exceptions import (ExecutorInitializerError, ExecutorUnloadableError,
                          ExecutorWorkerLostError, InitializerError,
                          UnloadableError, WorkerLostError)
from .chunks import TaskChunk

__all__ = ["ExecutorCore", "ExecutorFuture", "FutureSink", "for_executor", "set_outcome",
           "WINDOW_SECONDS", "MIN_WINDOW_PER_WORKER", "MAX_WINDOW_PER_WORKER"]

# The stdlib's logger for exceptions raised by done-callbacks.
_LOGGER = logging.getLogger("concurrent.futures")

WINDOW_SECONDS = 0.05        # estimated work in flight per worker
MIN_WINDOW_PER_WORKER = 2    # one running, one prefetched (the stdlib keeps workers + 1)
MAX_WINDOW_PER_WORKER = 512  # two of the scheduler's full batches (MAX_BATCH_CHUNKS)


def for_executor(exc: BaseException) -> BaseException:
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


class ExecutorFuture(Future):
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

    def __init__(self, core: ExecutorCore):
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


class FutureSink:
    """Receives one chunk's outcomes from the scheduler and completes its Future.

    A chunk of one task (``submit``) completes with the task's value; a
    chunk of several (``map`` with ``chunksize > 1``) completes with the
    list of values, or with the exception of its lowest-index failed task,
    as the stdlib's ``_process_chunk`` does.  The scheduler may deliver a
    chunk in several parts (a worker died or retired half-way through it).
    """

    __slots__ = ("core", "future", "start", "count", "as_list", "values",
                 "first_error", "remaining")

    def __init__(self, core: ExecutorCore, future: ExecutorFuture, start: int = 0,
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



def set_outcome(future: Future, value: Any, exc: BaseException | None) -> None:
    try:
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(for_executor(exc))
    except InvalidStateError:
        pass  # cancelled, or already set by an abort racing with a delivery


class ExecutorCore:
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
        self.in_flight: set[FutureSink] = set()  # handed to the scheduler, not settled
        self.shut_down = False
        # Set by Executor right after this core exists (the scheduler needs
        # the core's abort_all to be built).
        self.backend: _backends.Backend = None  # type: ignore[assignment]
        self.pid = _ownership.pid  # forked children inherit a copy; it is not theirs
        # The Executor's insights and timeline (_observe/observers.py), set by
        # it: the interpreter-exit hook writes a timeline= file once joined.
        self.observers: Any = None

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
                raise for_executor(self.backend.broken)
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
                raise for_executor(self.backend.broken)
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
    def settle(self, sink: FutureSink, value: Any, exc: BaseException | None) -> None:
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
        set_outcome(sink.future, value, exc)

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
                set_outcome(chunk.sink.future, None, broken)
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
            set_outcome(sink.future, None, exc)
