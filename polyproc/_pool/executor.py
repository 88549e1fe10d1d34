"""``polyproc.Executor``: a ``concurrent.futures.Executor`` on the Pool's scheduler.

Why not build on ``concurrent.futures.ProcessPoolExecutor``?  Its design
fails the project's bar in three places: one worker that dies (SIGKILL, the
OOM killer, a segfault, ``os._exit``) breaks the whole executor, failing
every pending future with ``BrokenProcessPool``; all workers share one call
queue, so a worker dying while holding its lock can wedge the rest; and a
trivial task costs 75 to 240 µs with ``chunksize=1`` on the 2-core
development machine (polyproc: about 20 µs, benchmarks/bench_executor.py).
The Pool's process backend (``ProcessScheduler``, loaded by name through
the ``Backend`` protocol of backend.py) already solves all three: a pipe per
worker, blame on exactly the task that was running when a worker died,
``timeout=``/``retries=`` per task, and batching that makes tiny tasks
cheap.  This module only adapts ``concurrent.futures``' interface to it;
the window of work handed to the scheduler, the futures and their
completion are in executor_core.py.

Data flow of a task::

  caller thread                 | PoolScheduler thread          | worker processes
  Executor (_pool/executor.py)  | ProcessScheduler._run         | worker_main
                                |                               |
  Executor.submit / map         |                               |
   -> make_chunk: a TaskChunk,  |                               |
      arguments pickled here    |                               |
      (an error fails it)       |                               |
   -> ExecutorCore.enqueue:     |                               |
      window has room? ---yes---+-> ProcessScheduler.submit ----+-> run tasks
        | no                    |                               |
        v                       |                               |
      ExecutorCore.waiting      |   FutureSink.deliver <--------+-- Results
      (a deque of chunks) <-----+-- ExecutorCore.settle:        |
                                |     tops the window up from   |
  ExecutorFuture.result <-------+--   waiting, then sets the    |
                                |     future's result/exception |

Reused from the stdlib: ``concurrent.futures.Future`` (its states,
``wait()``/``as_completed()`` waiters, done callbacks, and what asyncio
expects; subclassed only so that ``cancel()`` notifies waiters at once, see
``ExecutorFuture``) and the ``concurrent.futures.Executor`` base class
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
import dataclasses
import itertools
import os
import sys
import threading
import time
import weakref
from concurrent.futures import Executor as _StdExecutor
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator, ParamSpec, TypeVar

from . import backend as _backends
from . import messages as m
from . import ownership as _ownership
from .._process.context import default_context
from .chunks import TaskChunk, function_blob, function_name, make_chunk
from .executor_core import ExecutorCore, ExecutorFuture, FutureSink, for_executor
from .instruments import Instrument, Instruments
from .._observe.observers import DEFAULT_MAX_EVENTS, Observers, TimelineOption
from .progress import ProgressBar, progress_bar
from .options import (WorkerOptions, check_buffersize, check_callable,
                      check_hang_report, check_task_options)

__all__ = ["Executor"]

# For type checkers, as typeshed's ``concurrent.futures.Executor``: a
# submitted call's parameters (_P) and result (_T).
_P = ParamSpec("_P")
_T = TypeVar("_T")

# Every executor's core, for the interpreter-exit hook: weak, so that a core
# goes once its executor was dropped and its PoolScheduler thread has ended.
_live_cores: weakref.WeakSet[ExecutorCore] = weakref.WeakSet()


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
        if core.observers is not None:
            core.observers.write_on_close()


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
    ``polyproc.Instrument`` objects that watch the executor work;
    ``insights()`` and ``timeline=``/``timeline()`` are the Pool's;
    ``stacks()`` and ``hang_report=`` show what stuck workers are running,
    as ``Pool``'s do.
    ``cluster=`` runs the calls on a Dask cluster, as ``Pool(cluster=)``
    does (docs/cluster.md); *max_workers* then defaults to its threads.

    Differences from ``ProcessPoolExecutor``, none of which changes what
    working stdlib code means: ``max_tasks_per_child`` works with the fork
    start method too, and without ``mp_context`` the default context is
    used (the stdlib switches to spawn); workers start with the executor.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable[..., object] | None = None,
                 initargs: Iterable[Any] = (), *,
                 max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None,
                 instruments: Iterable[Instrument] = (), insights: bool = False,
                 timeline: TimelineOption = None,
                 timeline_events: int = DEFAULT_MAX_EVENTS,
                 hang_report: float | None = None, cluster: Any = None) -> None:
        options = WorkerOptions.for_executor(max_workers, initializer, initargs,
                                             max_tasks_per_child, max_memory_per_child,
                                             cluster)
        options = dataclasses.replace(options, hang_report=check_hang_report(hang_report))
        if mp_context is None:
            mp_context = default_context()
        self._mp_context = mp_context
        core = ExecutorCore(options.workers)
        self._instruments = Instruments(instruments)
        self._observers = Observers(self._instruments, insights, timeline, timeline_events)
        core.observers = self._observers
        # cluster=: the Dask backend (docs/cluster.md), imported only here.
        core.backend = _backends.load("process" if cluster is None else "dask")(
            options, mp_context, core.abort_all, self._instruments)
        # With a cluster and no max_workers, the backend counted its threads.
        self._max_workers = core.workers = core.backend.size
        self._core = core
        _live_cores.add(core)
        # Dropped without shutdown(): let its work finish, then stop its workers.
        weakref.finalize(self, core.shutdown, False)

    def submit(self, fn: Callable[_P, _T], /,
               *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
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

    def insights(self) -> dict[str, Any]:
        """Where the executor's time and bytes went so far (``Pool.insights()``).

        A JSON-serialisable dict; raises ``ValueError`` unless the executor
        was made with ``insights=True``.
        """
        return self._observers.insights()

    def timeline(self, path: str | os.PathLike[str]) -> None:
        """Write the Chrome Trace Event JSON recorded so far to *path* (``Pool.timeline``).

        Raises ``ValueError`` unless made with ``timeline=True`` or a file
        path; ``OSError`` if the file cannot be written.
        """
        self._observers.write_timeline(path)

    def stacks(self, timeout: float = 1.0) -> dict[int, str]:
        """What each worker is running now: ``{pid: text}``, as ``Pool.stacks()``.

        Returns within about *timeout* seconds, even while calls are
        blocked in C.  Raises ``InheritedPoolError`` in a forked child.
        """
        _ownership.check_owner(self._core.pid, "this Executor")
        return self._core.backend.stacks(timeout)

    def options(self, *, timeout: float | None = None,
                retries: int = 0) -> ExecutorOptions:
        """This executor with per-task options for the calls made through it.

        ``ex.options(timeout=30, retries=2).submit(fn, x)``: *timeout* is the
        seconds the task may run (then ``TaskTimeoutError``, and its worker
        is replaced), *retries* the further runs of a task whose worker
        died.  A separate method, not extra keywords of ``submit``, so that
        a function's own ``timeout=`` or ``retries=`` argument keeps reaching
        the function as it does with the stdlib.
        """
        check_task_options(timeout, retries)
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
        future = ExecutorFuture(core)
        transport = core.backend.transport
        try:
            chunk = make_chunk(function_blob(fn, transport), function_name(fn),
                               m.CALL_APPLY, [(args, kwargs)], 0,
                               FutureSink(core, future), timeout, retries, transport)
        except Exception as exc:  # could not be pickled
            _fail_unsent(core, future, exc)
            return future
        try:
            core.enqueue_one(chunk)
        except BaseException:
            chunk.release()
            raise
        return future

    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any],
            timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None,
            retries: int = 0, progress: bool = False) -> Iterator[_T]:
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

        *progress*: a tqdm bar on stderr that counts the calls as they
        complete (its total is the number of calls, unknown with
        *buffersize*), closed when the iterator ends or is left.
        """
        return self._map(fn, iterables, timeout, chunksize, None, retries, buffersize,
                         progress)

    def _map(self, fn: Callable, iterables: tuple, timeout: float | None,
             chunksize: int, task_timeout: float | None, retries: int,
             buffersize: int | None = None, progress: bool = False) -> Iterator:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        check_buffersize(buffersize)
        end_time = None if timeout is None else time.monotonic() + timeout
        if buffersize is not None:
            return self._buffered_map(fn, iterables, end_time, chunksize,
                                      task_timeout, retries, buffersize, progress)
        items = list(zip(*iterables))
        pieces = [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
        bar = self._progress_bar(progress, len(items))
        try:
            futures = self._submit_chunks(fn, m.CALL_STAR, pieces, chunksize,
                                          task_timeout, retries, bar=bar)
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        return _chained_results(futures, end_time, chunksize > 1, bar=bar)

    def _progress_bar(self, progress: bool, total: int | None) -> ProgressBar | None:
        """A bar counting the calls of one ``map`` (see progress.py), or None."""
        bar = progress_bar(progress, total)
        if bar is not None:
            bar.attach(self._instruments)  # its calls: add_call, per chunk
        return bar

    def _buffered_map(self, fn: Callable, iterables: tuple, end_time: float | None,
                      chunksize: int, task_timeout: float | None, retries: int,
                      buffersize: int, progress: bool = False) -> Iterator:
        """``map`` with ``buffersize``: ``Executor.map`` of 3.14, per chunk.

        The first *buffersize* chunks are submitted here (so the first
        unpicklable argument among them raises here); afterwards each
        ``next()`` submits the next chunk before it waits for the oldest
        result, so at most *buffersize* chunks are submitted and not yet
        yielded, and the input is never read further ahead than that.
        """
        pieces = _batched(zip(*iterables), chunksize)
        first = list(itertools.islice(pieces, buffersize))
        bar = self._progress_bar(progress, None)
        try:
            futures = collections.deque(self._submit_chunks(
                fn, m.CALL_STAR, first, chunksize, task_timeout, retries, bar=bar))
        except BaseException:
            if bar is not None:
                bar.close()
            raise
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
                first=submitted[0] * chunksize, bar=bar))
            submitted[0] += 1

        return _chained_results(futures, end_time, chunksize > 1, refill, bar)

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
            self._observers.write_on_close()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool | None:
        """``shutdown(wait=True)``, as the stdlib's; but on Ctrl-C, ``terminate_workers()``.

        Leaving ``with`` by a ``KeyboardInterrupt`` must not wait for the
        submitted calls: the stdlib's workers die of the terminal's SIGINT
        (they are in its process group), which breaks the executor and lets
        the program end; polyproc's workers ignore SIGINT (the parent
        decides), so waiting here would run every pending call before
        Ctrl-C took effect.  Running calls fail with ``BrokenProcessPool``,
        pending ones are cancelled, and the interrupt propagates.
        """
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.terminate_workers()
            return None
        return super().__exit__(exc_type, exc_val, exc_tb)

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
        core.shutdown(cancel_futures=True)
        from concurrent.futures.process import BrokenProcessPool
        # Failed first: a result that still arrives from a worker being
        # stopped is then ignored, as the stdlib's manager thread would.
        core.abort_all(BrokenProcessPool(
            f"the executor's workers were stopped by {operation}_workers() "
            f"while this call was running"))
        # SIGTERM (SIGKILL for kill_workers), SIGKILL after a grace period
        # to whoever is left; joins.
        core.backend.terminate(kill=operation == "kill")
        self._observers.write_on_close()

    def __reduce__(self):
        raise TypeError("Executor objects cannot be passed between processes or pickled")

    @property
    def _processes(self) -> dict:
        """``{pid: process}`` of the current workers (as the stdlib's private attribute)."""
        return {process.pid: process for process in self._core.backend.worker_processes()}

    # -- internals ----------------------------------------------------------
    def _submit_chunks(self, fn: Callable, call: int, pieces: list[list], chunksize: int,
                       timeout: float | None, retries: int,
                       first: int = 0, bar: ProgressBar | None = None) -> list[Future]:
        """Submit one future per piece; *bar* (``map(progress=True)``) counts them."""
        core = self._core
        _ownership.check_owner(core.pid, "this Executor")
        if core.shut_down:  # checked again under the lock by enqueue()
            raise RuntimeError("cannot schedule new futures after shutdown")
        check_task_options(timeout, retries)
        check_callable(fn)
        fn_name = function_name(fn)
        new_futures = [ExecutorFuture(core) for _ in pieces]
        futures: list[Future] = list(new_futures)
        transport = core.backend.transport
        try:
            fn_blob = function_blob(fn, transport)
        except Exception as exc:  # every call fails with it
            for future in new_futures:
                _fail_unsent(core, future, exc)
            if bar is not None:
                bar.count(sum(len(piece) for piece in pieces))
            return futures
        chunks: list[TaskChunk] = []
        try:
            for index, (piece, future) in enumerate(zip(pieces, new_futures)):
                start = first + index * chunksize
                sink = FutureSink(core, future, start, len(piece),
                                   as_list=chunksize > 1)
                try:
                    chunks.append(make_chunk(fn_blob, fn_name, call, piece,
                                             start, sink, timeout, retries, transport))
                except Exception as exc:  # could not be pickled
                    _fail_unsent(core, future, exc)
                    if bar is not None:
                        bar.count(len(piece))
                    continue
                if bar is not None:
                    bar.add_call(sink, len(piece))
            core.enqueue(chunks)
        except BaseException:
            for chunk in chunks:
                chunk.release()
            raise
        return futures


def _fail_unsent(core: ExecutorCore, future: ExecutorFuture,
                 exc: BaseException) -> None:
    """Fail *future*, whose call could not be pickled, with what pickle raised.

    As ``ProcessPoolExecutor``: ``result()`` raises it, ``submit`` returns.
    A broken executor raises its error at the call instead, as there.
    """
    if core.backend.broken is not None:
        raise for_executor(core.backend.broken)
    future.set_exception(exc)


def _batched(iterable: Iterable, n: int) -> Iterator[list]:
    """Lists of *n* consecutive items (``itertools.batched`` of 3.12, lazily)."""
    it = iter(iterable)
    while piece := list(itertools.islice(it, n)):
        yield piece


def _chained_results(futures: list[Future] | collections.deque, end_time: float | None,
                     chunked: bool, refill: Callable[[], None] | None = None,
                     bar: ProgressBar | None = None) -> Iterator:
    """The iterator ``map`` returns (``Executor.map``'s ``result_iterator``).

    No reference to a consumed future or to a result already yielded stays
    in this generator's frame while it is suspended (as in the stdlib): the
    futures are taken from the front of a deque, a chunk's list of results
    is emptied as it is yielded, and a single result is yielded straight
    from the call that fetched it, never from a local variable.

    *refill*, with ``buffersize``: called before each wait, it submits the
    next chunk (appending its future to *futures*, a deque).  *bar*, the
    map's progress bar, is closed when the iterator ends or is left (the
    generator's ``close()``, or its collection).
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
        if bar is not None:
            bar.close()


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

    def submit(self, fn: Callable[_P, _T], /,
               *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """``Executor.submit`` with these options."""
        return self._executor._submit(fn, args, kwargs, self._timeout, self._retries)

    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any],
            timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None,
            progress: bool = False) -> Iterator[_T]:
        """``Executor.map`` with these options; *timeout* is map's overall one."""
        return self._executor._map(fn, iterables, timeout, chunksize, self._timeout,
                                   self._retries, buffersize, progress)
