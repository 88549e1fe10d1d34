"""The Pool API layer: ``multiprocessing.pool.Pool``'s interface on a backend.

This layer turns calls (``apply_async``, ``map``, ``imap``...) into
``TaskChunk``s, serializing the arguments in the caller's thread so that an
argument that cannot be pickled raises *at the call*, and hands the chunks
to a backend.  It knows nothing of processes: the backend for local worker
processes is ``_scheduler.ProcessScheduler``; ``ThreadPool`` uses
``_thread_backend.ThreadBackend``; a cluster backend (Dask) would implement
the same small interface:

    size                      number of workers
    submit(chunks)            queue chunks; outcomes go to chunk.sink
    task_seconds(func)        measured mean seconds per task of func, or None
    add_feeder()/remove_feeder()  an imap feeder is still submitting
    cancel(sink)              stop running the chunks of one call (Ctrl-C)
    close() / terminate() / join(timeout)

Results reach the caller through the sinks in _results.py.  The
``_SinkRegistry`` knows every unfinished result so that terminating the
pool fails them instead of leaving a ``get()`` blocked forever.

Ctrl-C (``KeyboardInterrupt``) while a call submits or waits for its
results *cancels that call* (``_SinkRegistry.cancel``), not the pool: its
queued chunks are dropped, the workers running its tasks are stopped and
replaced, its result fails for any other waiter, and the pool stays
``RUN`` for the next call, as the stdlib's does (a notebook user
interrupts a cell and runs it again).  Other calls are not touched.

A Pool belongs to the process that made it (_ownership.py): in a forked
child every call raises ``InheritedPoolError`` at once, and clean-up only
marks the child's copy.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from multiprocessing import util
from typing import Any, Callable, Iterable

from . import _messages as m
from . import _ownership
from . import _serialization
from ._exceptions import ProcessError, SerializationError
from ._results import (ApplyResult, IMapIterator, IMapUnorderedIterator,
                       MapResult)
from ._tasks import (TaskChunk, auto_chunksize, function_name, iter_slices,
                     make_chunk, TARGET_CHUNK_SECONDS)

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"

# Inputs that map() and imap() cut into chunks by slicing, keeping their type.
_SLICEABLE = (list, tuple, range)

_CANCELLED_MESSAGE = (
    "this call was cancelled: a KeyboardInterrupt (Ctrl-C) interrupted it while "
    "it submitted its tasks or waited for its results, and its unfinished tasks "
    "were stopped.  The pool keeps running: submit the call again to run it.")


class _SinkRegistry:
    """Unfinished results of one pool, so that they can all be failed at once."""

    # No lock: set.add/discard are atomic under the GIL, and abort_all
    # swaps the set out in one step.  This runs once per apply_async call.
    def __init__(self):
        self._sinks: set = set()
        self.backend = None
        self.terminated = False
        self.pid = _ownership.pid  # the process that owns the pool
        # Thread ident -> the results made so far by the blocking call
        # (map, apply...) that thread is in (see _CancelOnInterrupt).
        self.blocking_calls: dict[int, list] = {}

    def register_sink(self, sink) -> None:
        self._sinks.add(sink)
        if self.blocking_calls:
            made = self.blocking_calls.get(threading.get_ident())
            if made is not None:
                made.append(sink)

    def unregister_sink(self, sink) -> None:
        self._sinks.discard(sink)

    def abort_all(self, exc: BaseException) -> None:
        sinks, self._sinks = self._sinks, set()
        for sink in list(sinks):
            sink.abort(exc)

    def cancel(self, sink) -> None:
        """Cancel one call (Ctrl-C): stop its tasks, fail its result; the pool runs on.

        The backend is told first, so that nothing more of the call is
        dispatched; then the result fails (``ProcessError``) for anyone
        else waiting on it.  Deliveries that raced ahead are kept.
        """
        if sink.cancelled:
            return
        sink.cancelled = True
        if self.backend is not None:
            self.backend.cancel(sink)
        sink.abort(ProcessError(_CANCELLED_MESSAGE))

    def terminate(self) -> None:
        """Stop the pool now: workers killed, unfinished results failed."""
        self.terminated = True
        if self.backend is not None:
            self.backend.terminate()
        self.abort_all(ProcessError("the pool was terminated before this task finished"))


class _CancelOnInterrupt:
    """``with`` around a blocking call (map, starmap, apply): Ctrl-C anywhere
    inside it cancels what it submitted.

    The result objects cancel on an interrupt *while waiting*, and
    submission on one *while submitting*; this also covers the instants in
    between (a signal is handled between any two bytecodes).  A result is
    known from the moment it registers, before any of its tasks is
    submitted.
    """

    __slots__ = ("registry", "ident", "outer")

    def __init__(self, registry: _SinkRegistry):
        self.registry = registry

    def __enter__(self) -> None:
        self.ident = threading.get_ident()
        self.outer = self.registry.blocking_calls.get(self.ident)
        self.registry.blocking_calls[self.ident] = []

    def __exit__(self, exc_type, exc, tb) -> None:
        calls = self.registry.blocking_calls
        made = calls.pop(self.ident, [])
        if self.outer is not None:
            calls[self.ident] = self.outer
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            for sink in made:
                self.registry.cancel(sink)


def _terminate_pool(registry: _SinkRegistry) -> None:
    registry.terminate()


def _check_options(timeout: float | None, retries: int) -> None:
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, not {retries!r}")


def _progress_bar(progress: bool, total: int | None):
    if not progress:
        return None
    from tqdm import tqdm  # imported only when asked for
    return tqdm(total=total, file=sys.stderr, unit="task")


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
    """

    # Whether task arguments are pickled (processes) or passed as they are
    # (ThreadPool).
    _serialize = True

    def __init__(self, processes: int | None = None, initializer=None,
                 initargs: Iterable = (), maxtasksperchild: int | None = None,
                 context=None, *, max_memory_per_child: int | None = None):
        from .process import current_process
        if getattr(current_process(), "_inheriting", False):
            from ._child import refuse_start_while_importing_main
            refuse_start_while_importing_main()
        self._state = "INIT"  # first: __del__ reads it even if __init__ fails
        if processes is None:
            processes = os.cpu_count() or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_memory_per_child is not None and max_memory_per_child <= 0:
            raise ValueError("max_memory_per_child must be a positive number of bytes or None")
        from .context import _default_context, _PolyFactories as _PolyContext
        if context is None:
            context = _default_context.get_context()
        elif not isinstance(context, _PolyContext):
            # A stdlib context (multiprocessing.get_context("spawn")): use
            # polyproc's context of the same start method, whose Process
            # class gives workers the daemon watchdog.
            context = _default_context.get_context(context.get_start_method())
        self._ctx = context
        self._processes = processes
        self._registry = _SinkRegistry()
        self._backend = self._make_backend(processes, initializer, initargs,
                                           maxtasksperchild, max_memory_per_child)
        self._registry.backend = self._backend
        self._terminate = util.Finalize(self, _terminate_pool, args=(self._registry,),
                                        exitpriority=15)
        self._state = RUN

    def _make_backend(self, processes, initializer, initargs, maxtasksperchild,
                      max_memory_per_child):
        from ._scheduler import ProcessScheduler
        return ProcessScheduler(self._ctx, processes, initializer, initargs,
                                maxtasksperchild, max_memory_per_child,
                                self._registry.abort_all)

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

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()

    @property
    def _pool(self) -> list:
        """The worker processes (as the stdlib's private ``_pool`` list)."""
        return [w.process for w in list(getattr(self._backend, "_workers", {}).values())]

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

    def apply(self, func: Callable, args: Iterable = (), kwds: dict = {}, *,
              timeout: float | None = None, retries: int = 0) -> Any:
        """Equivalent of ``func(*args, **kwds)``, run in a worker; blocks for the result."""
        with _CancelOnInterrupt(self._registry):
            return self.apply_async(func, args, kwds, timeout=timeout,
                                    retries=retries).get()

    def apply_async(self, func: Callable, args: Iterable = (), kwds: dict = {},
                    callback: Callable | None = None,
                    error_callback: Callable | None = None, *,
                    timeout: float | None = None, retries: int = 0) -> ApplyResult:
        """Asynchronous version of ``apply()``: returns an ``ApplyResult``.

        Raises ``SerializationError`` at once if *func*, *args* or *kwds*
        cannot be pickled.
        """
        self._check_running()
        _check_options(timeout, retries)
        fn_blob = self._function_blob(func)
        result = ApplyResult(self._registry, callback, error_callback)
        try:
            chunk = make_chunk(fn_blob, function_name(func), m.CALL_APPLY,
                               [(tuple(args), dict(kwds))], 0, result, timeout, retries,
                               self._serialize)
        except BaseException:
            self._registry.unregister_sink(result)
            raise
        self._backend.submit([chunk])
        return result

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
            *, timeout: float | None = None, retries: int = 0,
            progress: bool = False) -> list:
        """Apply *func* to each element of *iterable*, collecting the results in a list.

        Blocks until every task has finished; then raises the exception of
        the first (lowest-index) task that failed, if any.  Ctrl-C cancels
        the call (its tasks stop; the pool runs on) and re-raises.
        """
        with _CancelOnInterrupt(self._registry):
            return self._map_async(func, iterable, m.CALL_MAP, chunksize, None, None,
                                   timeout, retries, progress).get()

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                *, timeout: float | None = None, retries: int = 0,
                progress: bool = False) -> list:
        """Like ``map()`` but each element is unpacked as the arguments: ``func(*item)``."""
        with _CancelOnInterrupt(self._registry):
            return self._map_async(func, iterable, m.CALL_STAR, chunksize, None, None,
                                   timeout, retries, progress).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                  callback: Callable | None = None, error_callback: Callable | None = None,
                  *, timeout: float | None = None, retries: int = 0,
                  progress: bool = False) -> MapResult:
        """Asynchronous version of ``map()``: returns a ``MapResult``."""
        return self._map_async(func, iterable, m.CALL_MAP, chunksize, callback,
                               error_callback, timeout, retries, progress)

    def starmap_async(self, func: Callable, iterable: Iterable,
                      chunksize: int | None = None, callback: Callable | None = None,
                      error_callback: Callable | None = None, *,
                      timeout: float | None = None, retries: int = 0,
                      progress: bool = False) -> MapResult:
        """Asynchronous version of ``starmap()``: returns a ``MapResult``."""
        return self._map_async(func, iterable, m.CALL_STAR, chunksize, callback,
                               error_callback, timeout, retries, progress)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
             *, timeout: float | None = None, retries: int = 0,
             progress: bool = False) -> IMapIterator:
        """Like ``map()`` but lazy: an iterator of results, in input order.

        When *chunksize* is not given it is chosen adaptively (the stdlib
        defaults to 1, which makes imap of many small tasks slow).  A task
        that failed raises its exception at its position; iteration can go
        on after it.
        """
        return self._imap(func, iterable, chunksize, IMapIterator, timeout,
                          retries, progress)

    def imap_unordered(self, func: Callable, iterable: Iterable,
                       chunksize: int | None = None, *, timeout: float | None = None,
                       retries: int = 0, progress: bool = False) -> IMapIterator:
        """Like ``imap()`` but results come in the order they complete."""
        return self._imap(func, iterable, chunksize, IMapUnorderedIterator, timeout,
                          retries, progress)

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

    # -- building chunks ----------------------------------------------------
    def _function_blob(self, func: Callable):
        if not callable(func):
            raise TypeError(f"{func!r} is not callable")
        return _serialization.dumps_function(func) if self._serialize else func

    def _map_async(self, func, iterable, call, chunksize, callback, error_callback,
                   timeout, retries, progress) -> MapResult:
        self._check_running()
        _check_options(timeout, retries)
        _check_chunksize(chunksize)
        # Lists, tuples and ranges are sliced as they are: a slice of a
        # range is a range, which pickles in a few bytes however long it
        # is, so map(f, range(n)) sends no list of n ints to the workers.
        items = iterable if isinstance(iterable, _SLICEABLE) else list(iterable)
        fn_blob = self._function_blob(func)
        if chunksize is None:
            chunksize = auto_chunksize(len(items), self._processes,
                                       self._backend.task_seconds(fn_blob))
        result = MapResult(self._registry, len(items), callback, error_callback,
                           _progress_bar(progress, len(items)))
        self._submit_slices(fn_blob, function_name(func), call, items, chunksize,
                            result, timeout, retries)
        return result

    def _submit_slices(self, fn_blob, fn_name, call, items, chunksize, sink,
                       timeout, retries) -> None:
        """Chunk and submit a sized sequence from the caller's thread.

        Raises ``SerializationError`` (and fails *sink*) if an item can't be
        pickled; chunks already submitted then run for nothing.  Ctrl-C here
        cancels the call (``_SinkRegistry.cancel``) before it propagates.
        """
        try:
            for start in range(0, len(items), chunksize):
                piece = items[start:start + chunksize]
                if not isinstance(piece, _SLICEABLE):
                    piece = list(piece)
                chunk = make_chunk(fn_blob, fn_name, call, piece, start, sink,
                                   timeout, retries, self._serialize)
                self._backend.submit([chunk])
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
              progress) -> IMapIterator:
        self._check_running()
        _check_options(timeout, retries)
        _check_chunksize(chunksize)
        fn_blob = self._function_blob(func)
        fn_name = function_name(func)
        call = m.CALL_MAP
        if isinstance(iterable, _SLICEABLE):
            # Sized and sliceable: chunk now, in the caller's thread, so that
            # an unpicklable item raises here.
            length = len(iterable)
            if chunksize is None:
                chunksize = auto_chunksize(length, self._processes,
                                           self._backend.task_seconds(fn_blob))
            result = iterator_class(self._registry, length, _progress_bar(progress, length))
            self._submit_slices(fn_blob, fn_name, call, iterable, chunksize, result,
                                timeout, retries)
            return result
        total = len(iterable) if hasattr(iterable, "__len__") else None
        if chunksize is None and total is not None:
            chunksize = auto_chunksize(total, self._processes,
                                       self._backend.task_seconds(fn_blob))
        result = iterator_class(self._registry, None, _progress_bar(progress, total))
        self._backend.add_feeder()
        feeder = threading.Thread(
            target=_feed_chunks, name="PoolFeeder", daemon=True,
            args=(self._backend, self._registry, iterable, chunksize, fn_blob, fn_name,
                  call, result, timeout, retries, self._serialize))
        feeder.start()
        return result


def _check_chunksize(chunksize: int | None) -> None:
    if chunksize is not None and chunksize < 1:
        raise ValueError("Chunksize must be 1+, not {0:n}".format(chunksize))


def _feed_chunks(backend, registry, iterable, chunksize, fn_blob, fn_name, call,
                 sink, timeout, retries, serialize) -> None:
    """Body of an imap feeder thread: consume the input lazily, submit chunks.

    An item that can't be pickled fails at its own position; an input
    iterator that raises delivers that exception at the position after the
    last item it produced, then ends the results (as the stdlib does).
    """
    def grow_limit() -> int:
        seconds = backend.task_seconds(fn_blob)
        if seconds is None:
            return 256
        return max(1, int(TARGET_CHUNK_SECONDS / max(seconds, 1e-7)))

    start = 0
    try:
        try:
            for piece in iter_slices(iterable, chunksize, grow_limit):
                if registry.terminated or sink.cancelled:
                    return
                backend.submit(_chunks_for_piece(fn_blob, fn_name, call, piece, start,
                                                 sink, timeout, retries, serialize))
                if sink.cancelled:
                    # Cancelled (Ctrl-C in the caller's thread) while this
                    # piece went in: the scheduler may have handled that
                    # cancel before the piece arrived.  Asking again makes
                    # it drop the piece (or stop the worker running it).
                    backend.cancel(sink)
                    return
                start += len(piece)
        except Exception as exc:  # the input iterable raised
            sink.deliver(start, [None], {0: exc})
            start += 1
        sink.set_length(start)
    finally:
        backend.remove_feeder()


def _chunks_for_piece(fn_blob, fn_name, call, piece, start, sink, timeout,
                      retries, serialize) -> list[TaskChunk]:
    try:
        return [make_chunk(fn_blob, fn_name, call, piece, start, sink, timeout,
                           retries, serialize)]
    except SerializationError:
        pass
    chunks = []
    for offset, item in enumerate(piece):
        try:
            chunks.append(make_chunk(fn_blob, fn_name, call, [item], start + offset,
                                     sink, timeout, retries, serialize))
        except SerializationError as exc:
            sink.deliver(start + offset, [None], {0: exc})
    return chunks
