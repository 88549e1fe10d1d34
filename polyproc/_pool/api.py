"""The Pool API layer: ``multiprocessing.pool.Pool``'s interface on a backend.

This layer turns calls (``apply_async``, ``map``, ``imap``...) into
``TaskChunk``s, serializing the arguments in the caller's thread, and hands
the chunks to a backend.  An argument (or function) that cannot be pickled
fails its own task, as in the stdlib: ``get()`` (``next()`` for imap)
raises what pickle raised and ``error_callback`` receives it; ``map``
therefore raises it at the call.  This layer knows nothing of processes:
it talks to its backend through the ``Backend`` protocol (backend.py),
loaded by name: ``"process"`` for ``Pool`` (local worker processes, the
``ProcessScheduler``), ``"thread"`` for ``ThreadPool``.  How arguments are
serialized is the backend's ``transport``.

Results reach the caller through the sinks in results.py.  The
``SinkRegistry`` knows every unfinished result so that terminating the
pool fails them instead of leaving a ``get()`` blocked forever.

Ctrl-C (``KeyboardInterrupt``) while a call submits or waits for its
results *cancels that call* (``SinkRegistry.cancel``), not the pool: its
queued chunks are dropped, the workers running its tasks are stopped and
replaced, its result fails for any other waiter, and the pool stays
``RUN`` for the next call, as the stdlib's does (a notebook user
interrupts a cell and runs it again).  Other calls are not touched.

A Pool belongs to the process that made it (ownership.py): in a forked
child every call raises ``InheritedPoolError`` at once, and clean-up only
marks the child's copy.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
import warnings
import weakref
from multiprocessing import util
from types import TracebackType
from typing import Any, Callable, Iterable, Mapping, TypeVar

from .. import _public
from . import backend as _backends
from . import messages as m
from . import ownership as _ownership
from .._process.context import engine_context
from .backend import CLOSE, RUN, TERMINATE
from .results import (ApplyResult, IMapIterator, IMapUnorderedIterator,
                       MapResult)
from .chunks import (CLUSTER_CHUNKS_PER_WORKER, CLUSTER_MIN_CHUNK_SECONDS, Transport,
                     auto_chunksize, function_blob, function_name, make_chunk)
from .feeding import BUFFERED, Window, chunks_for_piece, fail_from_caller, feed_chunks
from .instruments import Instrument
from .._observe.observers import DEFAULT_MAX_EVENTS, Observers, TimelineOption
from .progress import progress_bar
from .registry import CancelOnInterrupt, SinkRegistry
from .options import (WorkerOptions, check_buffersize, check_callable,
                      check_hang_report, check_task_options)

# For type checkers, as typeshed's ``multiprocessing.pool``: the type of a
# task's argument (_S) and result (_T), and ``with Pool() as p`` of a
# subclass (ThreadPool) being that subclass.
_S = TypeVar("_S")
_T = TypeVar("_T")
_PoolT = TypeVar("_PoolT", bound="Pool")

# Inputs that map() and imap() cut into chunks by slicing, keeping their type.
_SLICEABLE = (list, tuple, range)

# An imap of an iterator on a cluster: chunks per worker read ahead of the
# consumer, and tasks per chunk counted when the chunks grow by themselves.
_CLUSTER_IMAP_CHUNKS = 4
_CLUSTER_IMAP_TASKS_PER_CHUNK = 64


def _terminate_pool(registry: SinkRegistry) -> None:
    registry.terminate()


class Pool:
    """A pool of worker processes to which jobs can be submitted.

    ``Pool(processes=None, initializer=None, initargs=(),
    maxtasksperchild=None, context=None)`` as in ``multiprocessing``, plus
    ``max_memory_per_child=`` (bytes of resident memory after which a
    worker is replaced before its next task).  Every submitting method also
    takes ``timeout=`` (seconds per task: ``TaskTimeoutError``, the worker
    is replaced) and ``retries=`` (runs of a task whose worker died before
    ``WorkerLostError``); ``map``, ``imap``, ``imap_unordered`` and
    ``starmap`` take ``progress=True`` for a progress bar on stderr.
    ``instruments=`` (and ``add_instrument``/``remove_instrument``) attach
    ``polyproc.Instrument`` objects that watch the pool work;
    with ``insights=True``, ``insights()`` says where the time went, and
    ``timeline="run.json"`` records a Chrome trace of the run, written when
    the pool is done (``timeline_events=`` bounds it);
    ``stacks()`` shows what each worker is running now; with
    ``hang_report=seconds``, once no task has finished for that long while
    tasks are outstanding, the same is written to stderr (once per stall).

    ``cluster=`` runs the tasks on a Dask cluster instead (docs/cluster.md):
    a scheduler address (``"tcp://host:8786"``), a ``distributed.Client``
    (the caller's, never closed by the pool) or ``"local"`` (a
    ``LocalCluster`` the pool starts and closes); *processes* then defaults
    to the cluster's total threads.  Raises ``ClusterDependencyError`` (an
    ``ImportError``) if Dask is not installed, ``ClusterError`` if the
    scheduler cannot be reached within 10 s.
    """

    # The engine that runs the tasks (see backend.py): local processes.
    _backend_name = "process"

    def __init__(self, processes: int | None = None,
                 initializer: Callable[..., object] | None = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: int | None = None,
                 context: Any = None, *, max_memory_per_child: int | None = None,
                 instruments: Iterable[Instrument] = (), insights: bool = False,
                 timeline: TimelineOption = None,
                 timeline_events: int = DEFAULT_MAX_EVENTS,
                 hang_report: float | None = None, cluster: Any = None) -> None:
        self._state = "INIT"  # first: __del__ reads it even if __init__ fails
        options = WorkerOptions.for_pool(processes, initializer, initargs,
                                         maxtasksperchild, max_memory_per_child, cluster)
        options = dataclasses.replace(options, hang_report=check_hang_report(hang_report))
        # None: the default; a stdlib context (multiprocessing.get_context(
        # "spawn")): polyproc's of the same start method, whose Process class
        # gives workers the daemon watchdog.
        self._ctx = engine_context(context)
        self._registry = SinkRegistry()
        for instrument in instruments:
            self.add_instrument(instrument)
        self._observers = Observers(self._registry.instruments, insights, timeline,
                                    timeline_events)
        # A cluster runs on the Dask backend (docs/cluster.md): loaded only
        # here, so that `import polyproc` never imports Dask.
        self._cluster = cluster
        backend_name = self._backend_name if cluster is None else "dask"
        self._backend: _backends.Backend = _backends.load(backend_name)(
            options, self._ctx, self._registry.abort_all, self._registry.instruments)
        # With a cluster and no ``processes``, the backend counted its threads.
        self._processes = self._backend.size
        self._transport: Transport = self._backend.transport
        self._registry.backend = self._backend
        self._terminate = util.Finalize(self, _terminate_pool, args=(self._registry,),
                                        exitpriority=15)
        # After _terminate at exit (lower priority runs later): the file
        # then has the workers' exits.
        self._write_timeline = util.Finalize(self, self._observers.write_on_close,
                                             exitpriority=14)
        self._state = RUN

    def add_instrument(self, instrument: Instrument) -> None:
        """Start calling *instrument*'s events (a no-op if attached already).

        See ``polyproc.Instrument``: events are called in the pool's
        scheduler thread and must be quick; one that raises gets its
        instrument removed (and the error logged on ``polyproc.Instrument``).
        """
        self._registry.instruments.add_instrument(instrument)

    def remove_instrument(self, instrument: Instrument) -> None:
        """Stop calling *instrument*; ``KeyError`` if it is not attached
        (never added, or removed because it raised)."""
        self._registry.instruments.remove_instrument(instrument)

    def insights(self) -> dict[str, Any]:
        """Where the pool's time and bytes went so far, as a JSON-serialisable dict.

        ``{"totals": {...}, "workers": [...], "slowest_tasks": [...]}``: see
        docs/observe.md for every key.  Callable from any thread, at any
        time, also after the pool is closed.  Raises ``ValueError`` unless
        the pool was made with ``insights=True`` (off by default: it costs a
        few microseconds per chunk).
        """
        return self._observers.insights()

    def timeline(self, path: str | os.PathLike[str]) -> None:
        """Write the Chrome Trace Event JSON recorded so far to *path*.

        Opens in Perfetto or ``chrome://tracing``; ``python -m polyproc plot``
        draws it.  Raises ``ValueError`` unless the pool was made with
        ``timeline=True`` or ``timeline="file.json"``; ``OSError`` if the
        file cannot be written.
        """
        self._observers.write_timeline(path)

    def stacks(self, timeout: float = 1.0) -> dict[int, str]:
        """What each worker is running now: ``{pid: text}`` for every live worker.

        Each text names the tasks the worker holds (the one running, with
        its arguments, and those waiting behind it), then the Python stack
        of each of its threads, most recent call first, as ``faulthandler``
        writes it.  Works while a task is blocked in C (``time.sleep``, a
        lock, a read): the stack is written by a signal handler in the
        worker (signal ``SIGRTMAX-6``, or ``POLYPROC_STACKS_SIGNAL``; see
        docs/observe.md).  Returns within about *timeout* seconds; a worker
        that does not answer in time, or dies meanwhile, gets a text that
        says so.  In a ``ThreadPool``, the keys are the worker threads'
        native ids; on a cluster pool, every Dask worker process is asked
        (docs/cluster.md), its text headed by its address and host.  Empty
        once the pool's workers are gone (a cluster pool: once it is done).

        Raises ``InheritedPoolError`` in a forked child.
        """
        _ownership.check_owner(self._registry.pid, "this Pool")
        return self._backend.stacks(timeout)

    # -- the stdlib's interface --------------------------------------------
    def __repr__(self) -> str:
        cls = self.__class__
        return (f"<{cls.__module__}.{cls.__qualname__} state={self._state} "
                f"pool_size={self._processes}>")

    def __reduce__(self):
        raise NotImplementedError(
            "pool objects cannot be passed between processes or pickled")

    def __del__(self, _warn=warnings.warn, RUN=RUN):
        if getattr(self, "_state", None) == RUN and self._owned():
            _warn(f"unclosed running multiprocessing pool {self!r}",
                  ResourceWarning, source=self)

    def __enter__(self: _PoolT) -> _PoolT:
        self._check_running()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc_val: BaseException | None, exc_tb: TracebackType | None) -> None:
        self.terminate()

    @property
    def _pool(self) -> list:
        """The worker processes (as the stdlib's private ``_pool.api`` list)."""
        return self._backend.worker_processes()

    def _owned(self) -> bool:
        """Whether this process made the pool (not a fork child's copy of it)."""
        return self._registry.pid == _ownership.pid

    def _check_running(self) -> None:
        """Raise unless the pool can take work here and now.

        ``InheritedPoolError`` in a forked child (nothing there runs the
        call); ``ValueError("Pool not running")`` once closed or terminated,
        including by its finalizer at interpreter exit.
        """
        _ownership.check_owner(self._registry.pid, "this Pool")
        if self._state != RUN or self._registry.terminated:
            raise ValueError("Pool not running")

    def apply(self, func: Callable[..., _T], args: Iterable[Any] = (),
              kwds: Mapping[str, Any] = {}, *,
              timeout: float | None = None, retries: int = 0) -> _T:
        """Equivalent of ``func(*args, **kwds)``, run in a worker; blocks for the result."""
        with CancelOnInterrupt(self._registry):
            return self.apply_async(func, args, kwds, timeout=timeout,
                                    retries=retries).get()

    def apply_async(self, func: Callable[..., _T], args: Iterable[Any] = (),
                    kwds: Mapping[str, Any] = {},
                    callback: Callable[[_T], object] | None = None,
                    error_callback: Callable[[BaseException], object] | None = None, *,
                    timeout: float | None = None, retries: int = 0) -> ApplyResult[_T]:
        """Asynchronous version of ``apply()``: returns an ``ApplyResult``.

        If *func*, *args* or *kwds* cannot be pickled, the result fails
        with what pickle raised (as the stdlib's does): ``get()`` raises it
        and *error_callback* receives it.
        """
        self._check_running()
        check_task_options(timeout, retries)
        check_callable(func)
        result: ApplyResult[_T] = ApplyResult(self._registry, callback, error_callback)
        try:
            chunk = make_chunk(self._function_blob(func), function_name(func),
                               m.CALL_APPLY, [(tuple(args), dict(kwds))], 0, result,
                               timeout, retries, self._transport)
        except Exception as exc:  # could not be pickled
            fail_from_caller(result, 0, exc)
            return result
        except BaseException:
            self._registry.unregister_sink(result)
            raise
        self._backend.submit([chunk])
        return result

    def map(self, func: Callable[[_S], _T], iterable: Iterable[_S],
            chunksize: int | None = None,
            *, timeout: float | None = None, retries: int = 0,
            progress: bool = False) -> list[_T]:
        """Apply *func* to each element of *iterable*, collecting the results in a list.

        Blocks until every task has finished; then raises the exception of
        the first (lowest-index) task that failed, if any.  Ctrl-C cancels
        the call (its tasks stop; the pool runs on) and re-raises.
        """
        with CancelOnInterrupt(self._registry):
            return self._map_async(func, iterable, m.CALL_MAP, chunksize, None, None,
                                   timeout, retries, progress).get()

    def starmap(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None,
                *, timeout: float | None = None, retries: int = 0,
                progress: bool = False) -> list[_T]:
        """Like ``map()`` but each element is unpacked as the arguments: ``func(*item)``."""
        with CancelOnInterrupt(self._registry):
            return self._map_async(func, iterable, m.CALL_STAR, chunksize, None, None,
                                   timeout, retries, progress).get()

    def map_async(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                  chunksize: int | None = None,
                  callback: Callable[[list[_T]], object] | None = None,
                  error_callback: Callable[[BaseException], object] | None = None,
                  *, timeout: float | None = None, retries: int = 0,
                  progress: bool = False) -> MapResult[_T]:
        """Asynchronous version of ``map()``: returns a ``MapResult``."""
        return self._map_async(func, iterable, m.CALL_MAP, chunksize, callback,
                               error_callback, timeout, retries, progress)

    def starmap_async(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]],
                      chunksize: int | None = None,
                      callback: Callable[[list[_T]], object] | None = None,
                      error_callback: Callable[[BaseException], object] | None = None, *,
                      timeout: float | None = None, retries: int = 0,
                      progress: bool = False) -> MapResult[_T]:
        """Asynchronous version of ``starmap()``: returns a ``MapResult``."""
        return self._map_async(func, iterable, m.CALL_STAR, chunksize, callback,
                               error_callback, timeout, retries, progress)

    def imap(self, func: Callable[[_S], _T], iterable: Iterable[_S],
             chunksize: int | None = None,
             buffersize: int | None = None, *, timeout: float | None = None,
             retries: int = 0, progress: bool = False) -> IMapIterator[_T]:
        """Like ``map()`` but lazy: an iterator of results, in input order.

        When *chunksize* is not given it is chosen adaptively (the stdlib
        defaults to 1, which makes imap of many small tasks slow).  A task
        that failed raises its exception at its position; iteration can go
        on after it.

        *buffersize* (the stdlib's from Python 3.16, on every Python): at
        most that many tasks (chunks, when *chunksize* is given) are taken
        from *iterable* and not yet yielded, so the input is read only as
        results are consumed and may be endless.  Once the pool is closed
        or terminated no more input is taken: the iterator ends after the
        tasks already taken.  Raises ``TypeError`` if it is not an int,
        ``ValueError`` if below 1.
        """
        # Ctrl-C before imap() returns (its feeder may be submitting
        # already) cancels the call: the caller never gets its iterator.
        with CancelOnInterrupt(self._registry):
            return self._imap(func, iterable, chunksize, IMapIterator, timeout,
                              retries, progress, buffersize)

    def imap_unordered(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                       chunksize: int | None = None, buffersize: int | None = None,
                       *, timeout: float | None = None, retries: int = 0,
                       progress: bool = False) -> IMapIterator[_T]:
        """Like ``imap()`` but results come in the order they complete."""
        with CancelOnInterrupt(self._registry):  # as in imap()
            return self._imap(func, iterable, chunksize, IMapUnorderedIterator,
                              timeout, retries, progress, buffersize)

    def close(self) -> None:
        """Prevent further submissions; workers exit once all work is done.

        In a forked child it only closes the child's copy: the workers are
        the parent's.
        """
        if self._state == RUN:
            self._state = CLOSE
            if self._owned():
                self._backend.close()

    def terminate(self) -> None:
        """Stop the workers at once; unfinished results fail with ``ProcessError``.

        In a forked child it only marks the child's copy terminated.
        """
        self._state = TERMINATE
        if self._owned():
            self._terminate()
            self._observers.pool_stopped("terminated")
            self._write_timeline()

    def join(self) -> None:
        """Wait for the workers to exit; call ``close()`` or ``terminate()`` first.

        In a forked child it returns at once: there is nothing of its own to wait for.
        """
        if self._state == RUN:
            raise ValueError("Pool is still running")
        elif self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        if self._owned():
            self._backend.join()
            self._observers.pool_stopped("shut down")
            self._write_timeline()

    # -- building chunks ----------------------------------------------------
    def _function_blob(self, func: Callable):
        """*func* as the backend takes it (raises what pickle raised if it
        can't be pickled)."""
        return function_blob(func, self._transport)

    def _auto_chunksize(self, length: int, fn_blob: Any) -> int:
        """``chunks.auto_chunksize`` for this pool: coarser on a cluster."""
        seconds = self._backend.task_seconds(fn_blob)
        if self._cluster is None:
            return auto_chunksize(length, self._processes, seconds)
        return auto_chunksize(length, self._processes, seconds,
                              chunks_per_worker=CLUSTER_CHUNKS_PER_WORKER,
                              min_chunk_seconds=CLUSTER_MIN_CHUNK_SECONDS)

    def _map_async(self, func, iterable, call, chunksize, callback, error_callback,
                   timeout, retries, progress) -> MapResult[Any]:
        self._check_running()
        check_task_options(timeout, retries)
        _check_chunksize(chunksize)
        check_callable(func)
        # Lists, tuples and ranges are sliced as they are: a slice of a
        # range is a range, which pickles in a few bytes however long it
        # is, so map(f, range(n)) sends no list of n ints to the workers.
        items = iterable if isinstance(iterable, _SLICEABLE) else list(iterable)
        try:
            fn_blob = self._function_blob(func)
        except Exception as exc:  # every task fails with it, as in the stdlib
            result: MapResult[Any] = MapResult(self._registry, len(items), callback,
                                               error_callback)
            fail_from_caller(result, None, exc)
            return result
        if chunksize is None:
            chunksize = self._auto_chunksize(len(items), fn_blob)
        result = MapResult(self._registry, len(items), callback, error_callback,
                           progress_bar(progress, len(items)))
        self._submit_slices(fn_blob, function_name(func), call, items, chunksize,
                            result, timeout, retries)
        return result

    def _submit_slices(self, fn_blob, fn_name, call, items, chunksize, sink,
                       timeout, retries) -> None:
        """Chunk and submit a sized sequence from the caller's thread.

        An item that can't be pickled fails at its own position (see
        ``chunks_for_piece``); the others run.  Ctrl-C here cancels the
        call (``SinkRegistry.cancel``) before it propagates.
        """
        try:
            for start in range(0, len(items), chunksize):
                piece = items[start:start + chunksize]
                if not isinstance(piece, _SLICEABLE):
                    piece = list(piece)
                chunks = chunks_for_piece(fn_blob, fn_name, call, piece, start, sink,
                                           timeout, retries, self._transport)
                self._backend.submit(chunks)
                if start == 0 and len(items) > chunksize:
                    # Let the scheduler thread dispatch the first chunk now,
                    # while this thread pickles the rest: without this it
                    # can wait a whole GIL switch interval (5 ms) for its turn.
                    time.sleep(0)
        except KeyboardInterrupt:
            self._registry.cancel(sink)
            raise
        except BaseException as exc:
            sink.abort(exc)
            raise

    def _imap(self, func, iterable, chunksize, iterator_class, timeout, retries,
              progress, buffersize=None) -> IMapIterator:
        self._check_running()
        check_task_options(timeout, retries)
        _check_chunksize(chunksize)
        check_buffersize(buffersize)
        check_callable(func)
        try:
            fn_blob = self._function_blob(func)
        except Exception as exc:  # the first next() raises it
            result = iterator_class(self._registry, None)
            result.abort(exc)
            return result
        fn_name = function_name(func)
        call = m.CALL_MAP
        if buffersize is not None:
            return self._buffered_imap(fn_blob, fn_name, iterable, chunksize,
                                       buffersize, iterator_class, timeout,
                                       retries, progress)
        if self._cluster is not None and not isinstance(iterable, _SLICEABLE):
            # On a cluster the input is read only as results are consumed,
            # so that an endless generator runs in bounded memory; unlike
            # an explicit buffersize, close() does not end it.
            return self._buffered_imap(fn_blob, fn_name, iterable, chunksize,
                                       _CLUSTER_IMAP_CHUNKS * self._processes,
                                       iterator_class, timeout, retries, progress,
                                       until_terminated=True)
        if isinstance(iterable, _SLICEABLE):
            # Sized and sliceable: chunk now, in the caller's thread.
            length = len(iterable)
            if chunksize is None:
                chunksize = self._auto_chunksize(length, fn_blob)
            result = iterator_class(self._registry, length, progress_bar(progress, length))
            self._submit_slices(fn_blob, fn_name, call, iterable, chunksize, result,
                                timeout, retries)
            return result
        total = len(iterable) if hasattr(iterable, "__len__") else None
        if chunksize is None and total is not None:
            chunksize = self._auto_chunksize(total, fn_blob)
        result = iterator_class(self._registry, None, progress_bar(progress, total))
        self._backend.add_feeder()
        feeder = threading.Thread(
            target=feed_chunks, name="PoolFeeder", daemon=True,
            args=(self._backend, self._registry, iterable, chunksize, fn_blob, fn_name,
                  call, result, timeout, retries, self._transport))
        feeder.start()
        return result

    def _buffered_imap(self, fn_blob, fn_name, iterable, chunksize, buffersize,
                       iterator_class, timeout, retries, progress,
                       until_terminated: bool = False) -> IMapIterator:
        """``imap`` with *buffersize*: a feeder that takes input only as
        results are consumed (see ``Window``).  *until_terminated*: the
        feeder stops at ``terminate()`` only, not at ``close()``."""
        if chunksize is None and until_terminated:
            # Tasks, not chunks, are counted when the chunks grow: room
            # for chunks that amortise a cluster task's cost.
            buffersize *= _CLUSTER_IMAP_TASKS_PER_CHUNK
        window = Window(buffersize * (chunksize or 1))
        total = len(iterable) if hasattr(iterable, "__len__") else None
        result = BUFFERED[iterator_class](self._registry, None,
                                           progress_bar(progress, total))
        result._window = window
        pool = weakref.ref(self)

        def stopped() -> bool:
            # The stdlib's rule (gh-155477): once the pool leaves RUN, a
            # throttled feeder stops, so close(); join() cannot wait for a
            # consumer that will never come.
            alive = pool()
            if alive is None:
                return True
            if until_terminated:
                return alive._state == TERMINATE or alive._registry.terminated
            return alive._state != RUN

        self._backend.add_feeder()
        threading.Thread(
            target=feed_chunks, name="PoolFeeder", daemon=True,
            args=(self._backend, self._registry, iterable, chunksize, fn_blob, fn_name,
                  m.CALL_MAP, result, timeout, retries, self._transport,
                  (window, stopped))).start()
        return result



class ThreadPool(Pool):
    """A pool of worker threads with the Pool API (``multiprocessing.pool.ThreadPool``)."""

    _backend_name = "thread"

    def __init__(self, processes: int | None = None, initializer=None,
                 initargs: Iterable = (), *, instruments: Iterable[Instrument] = (),
                 insights: bool = False, timeline: TimelineOption = None,
                 timeline_events: int = DEFAULT_MAX_EVENTS):
        Pool.__init__(self, processes, initializer, initargs, instruments=instruments,
                      insights=insights, timeline=timeline,
                      timeline_events=timeline_events)


# Public as ``polyproc.pool.X`` (reprs, tracebacks), even where the pool
# engine is used without the public module (a manager's server).
_public.fixup_module_metadata("polyproc.pool", {"Pool": Pool, "ThreadPool": ThreadPool})

def _check_chunksize(chunksize: int | None) -> None:
    if chunksize is not None and chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
