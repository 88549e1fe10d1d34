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
      here (errors raise here)  |                               |
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
stalls the executor, as it does in the stdlib.

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
import os
import sys
import threading
import time
import weakref
from concurrent.futures import Executor as _StdExecutor
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from . import _messages as m
from . import _ownership
from . import _serialization
from ._exceptions import (ExecutorInitializerError, ExecutorWorkerLostError,
                          InitializerError, WorkerLostError)
from ._pool import _check_options
from ._tasks import TaskChunk, function_name, make_chunk

if TYPE_CHECKING:
    from ._scheduler import ProcessScheduler

__all__ = ["Executor"]

WINDOW_SECONDS = 0.05        # estimated work in flight per worker
MIN_WINDOW_PER_WORKER = 2    # one running, one prefetched (the stdlib keeps workers + 1)
MAX_WINDOW_PER_WORKER = 512  # two of the scheduler's full batches (MAX_BATCH_CHUNKS)


def _for_executor(exc: BaseException) -> BaseException:
    """The exception a future raises for *exc* from the scheduler.

    A lost worker and a failed initializer become the subclasses that are
    also ``BrokenProcessPool``, which is what stdlib code catches.
    """
    if isinstance(exc, WorkerLostError) and not isinstance(exc, ExecutorWorkerLostError):
        new: BaseException = ExecutorWorkerLostError(
            exc.args[0] if exc.args else "", exc.pid, exc.exitcode, exc.task)
    elif isinstance(exc, InitializerError) and not isinstance(exc, ExecutorInitializerError):
        new = ExecutorInitializerError(*exc.args)
    else:
        return exc
    new.__cause__ = exc.__cause__
    return new


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

    Differences from ``ProcessPoolExecutor``, none of which changes what
    working stdlib code means: ``max_tasks_per_child`` works with the fork
    start method too, and without ``mp_context`` the default context is
    used (the stdlib switches to spawn); workers start with the executor.
    """

    def __init__(self, max_workers: int | None = None, mp_context=None,
                 initializer: Callable | None = None, initargs: Iterable = (), *,
                 max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None):
        from .process import current_process
        if getattr(current_process(), "_inheriting", False):
            from ._child import refuse_start_while_importing_main
            refuse_start_while_importing_main()
        if max_workers is None:
            max_workers = os.cpu_count() or 1
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
        core.backend = ProcessScheduler(mp_context, max_workers, initializer, initargs,
                                        max_tasks_per_child, max_memory_per_child,
                                        core.abort_all)
        self._core = core
        _live_cores.add(core)
        # Dropped without shutdown(): let its work finish, then stop its workers.
        weakref.finalize(self, core.shutdown, False)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)`` to run in a worker; return a Future.

        Never blocks.  Raises ``RuntimeError`` after ``shutdown()``,
        ``SerializationError`` (a ``ValueError``) at once if *fn*, *args* or
        *kwargs* cannot be pickled, the initializer's error once the
        executor is broken, and ``InheritedPoolError`` (a ``RuntimeError``)
        in a child made by fork after the executor was.  Every keyword argument goes to *fn*, as with
        ``ProcessPoolExecutor``; polyproc's per-task options are set with
        ``options()``.
        """
        return self._submit(fn, args, kwargs, None, 0)

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
        chunk = make_chunk(_serialization.dumps_function(fn), function_name(fn),
                           m.CALL_APPLY, [(args, kwargs)], 0, _FutureSink(core, future),
                           timeout, retries)
        try:
            core.enqueue_one(chunk)
        except BaseException:
            chunk.release()
            raise
        return future

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1, retries: int = 0) -> Iterator:
        """Return an iterator equivalent to ``map(fn, *iterables)``, run in workers.

        Every call is submitted at once (so an argument that cannot be
        pickled raises ``SerializationError`` here), *chunksize* calls per
        scheduler chunk.  The iterator yields results in order; it raises a
        call's exception at that call's position, and
        ``concurrent.futures.TimeoutError`` if a result is not there
        *timeout* seconds after ``map()`` was called.  Leaving the iterator
        early cancels the calls that have not started.
        """
        return self._map(fn, iterables, timeout, chunksize, None, retries)

    def _map(self, fn: Callable, iterables: tuple, timeout: float | None,
             chunksize: int, task_timeout: float | None, retries: int) -> Iterator:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else time.monotonic() + timeout
        items = list(zip(*iterables))
        pieces = [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
        futures = self._submit_chunks(fn, m.CALL_STAR, pieces, chunksize, task_timeout,
                                      retries)
        return _chained_results(futures, end_time, chunksize > 1)

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

    def __reduce__(self):
        raise TypeError("Executor objects cannot be passed between processes or pickled")

    @property
    def _processes(self) -> dict:
        """``{pid: process}`` of the current workers (as the stdlib's private attribute)."""
        return {w.process.pid: w.process
                for w in list(getattr(self._core.backend, "_workers", {}).values())}

    # -- internals ----------------------------------------------------------
    def _submit_chunks(self, fn: Callable, call: int, pieces: list[list], chunksize: int,
                       timeout: float | None, retries: int) -> list[Future]:
        core = self._core
        _ownership.check_owner(core.pid, "this Executor")
        if core.shut_down:  # checked again under the lock by enqueue()
            raise RuntimeError("cannot schedule new futures after shutdown")
        _check_options(timeout, retries)
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        fn_blob = _serialization.dumps_function(fn)
        fn_name = function_name(fn)
        chunks: list[TaskChunk] = []
        try:
            for index, piece in enumerate(pieces):
                future = _ExecutorFuture(core)
                sink = _FutureSink(core, future, index * chunksize, len(piece),
                                   as_list=chunksize > 1)
                chunks.append(make_chunk(fn_blob, fn_name, call, piece, index * chunksize,
                                         sink, timeout, retries))
            core.enqueue(chunks)
        except BaseException:
            for chunk in chunks:
                chunk.release()
            raise
        return [c.sink.future for c in chunks]


def _chained_results(futures: list[Future], end_time: float | None,
                     chunked: bool) -> Iterator:
    """The iterator ``map`` returns (``Executor.map``'s ``result_iterator``)."""
    # Reversed, and popped, so that no reference to a consumed future or
    # result is kept (as the stdlib does).
    futures.reverse()
    try:
        while futures:
            future = futures.pop()
            try:
                if end_time is None:
                    result = future.result()
                else:
                    result = future.result(end_time - time.monotonic())
            except BaseException:
                future.cancel()
                raise
            finally:
                del future
            if chunked:
                result.reverse()
                while result:
                    yield result.pop()
            else:
                yield result
    finally:
        for future in futures:
            future.cancel()


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
            chunksize: int = 1) -> Iterator:
        """``Executor.map`` with these options; *timeout* is map's overall one."""
        return self._executor._map(fn, iterables, timeout, chunksize, self._timeout,
                                   self._retries)
