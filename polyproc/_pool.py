"""The Pool API layer: ``multiprocessing.pool.Pool``'s interface on a backend.

This layer turns calls (``apply_async``, ``map``, ``imap``...) into
``TaskChunk``s, serializing the arguments in the caller's thread, and hands
the chunks to a backend.  An argument (or function) that cannot be pickled
fails its own task, as in the stdlib: ``get()`` (``next()`` for imap)
raises what pickle raised and ``error_callback`` receives it; ``map``
therefore raises it at the call.  This layer knows nothing of processes:
the backend for local worker processes is ``_scheduler.ProcessScheduler``;
``ThreadPool`` uses ``_thread_backend.ThreadBackend``; a cluster backend
(Dask) would implement the same small interface:

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

import itertools
import os
import threading
import time
import warnings
import weakref
from multiprocessing import util
from typing import Any, Callable, Iterable

from . import _messages as m
from . import _ownership
from . import _serialization
from ._cpu import process_cpu_count
from ._exceptions import ProcessError
from ._instruments import Instrument, Instruments
from ._progress import progress_bar as _progress_bar
from ._results import (ApplyResult, IMapIterator, IMapUnorderedIterator,
                       MapResult)
from ._tasks import (MAX_GROWN_CHUNKSIZE, TaskChunk, auto_chunksize,
                     function_name, iter_slices, make_chunk, TARGET_CHUNK_SECONDS)

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
        self.instruments = Instruments()  # the pool's, which its backend fires
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
    ``polyproc.Instrument`` objects that watch the pool work.
    """

    # Whether task arguments are pickled (processes) or passed as they are
    # (ThreadPool).
    _serialize = True

    def __init__(self, processes: int | None = None, initializer=None,
                 initargs: Iterable = (), maxtasksperchild: int | None = None,
                 context=None, *, max_memory_per_child: int | None = None,
                 instruments: Iterable[Instrument] = ()):
        from .process import current_process
        if getattr(current_process(), "_inheriting", False):
            from ._child import refuse_start_while_importing_main
            refuse_start_while_importing_main()
        self._state = "INIT"  # first: __del__ reads it even if __init__ fails
        if processes is None:
            # As the stdlib from 3.13 (os.process_cpu_count), on every
            # Python, and capped by a container's CPU quota (see _cpu).
            processes = process_cpu_count() or 1
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
        for instrument in instruments:
            self.add_instrument(instrument)
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
                                self._registry.abort_all, self._registry.instruments)

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

        If *func*, *args* or *kwds* cannot be pickled, the result fails
        with what pickle raised (as the stdlib's does): ``get()`` raises it
        and *error_callback* receives it.
        """
        self._check_running()
        _check_options(timeout, retries)
        _check_callable(func)
        result = ApplyResult(self._registry, callback, error_callback)
        try:
            chunk = make_chunk(self._function_blob(func), function_name(func),
                               m.CALL_APPLY, [(tuple(args), dict(kwds))], 0, result,
                               timeout, retries, self._serialize)
        except Exception as exc:  # could not be pickled
            _fail_from_caller(result, 0, exc)
            return result
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
             buffersize: int | None = None, *, timeout: float | None = None,
             retries: int = 0, progress: bool = False) -> IMapIterator:
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
        return self._imap(func, iterable, chunksize, IMapIterator, timeout,
                          retries, progress, buffersize)

    def imap_unordered(self, func: Callable, iterable: Iterable,
                       chunksize: int | None = None, buffersize: int | None = None,
                       *, timeout: float | None = None, retries: int = 0,
                       progress: bool = False) -> IMapIterator:
        """Like ``imap()`` but results come in the order they complete."""
        return self._imap(func, iterable, chunksize, IMapUnorderedIterator, timeout,
                          retries, progress, buffersize)

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
        """*func* pickled (raises what pickle raised if it can't be)."""
        return _serialization.dumps_function(func) if self._serialize else func

    def _map_async(self, func, iterable, call, chunksize, callback, error_callback,
                   timeout, retries, progress) -> MapResult:
        self._check_running()
        _check_options(timeout, retries)
        _check_chunksize(chunksize)
        _check_callable(func)
        # Lists, tuples and ranges are sliced as they are: a slice of a
        # range is a range, which pickles in a few bytes however long it
        # is, so map(f, range(n)) sends no list of n ints to the workers.
        items = iterable if isinstance(iterable, _SLICEABLE) else list(iterable)
        try:
            fn_blob = self._function_blob(func)
        except Exception as exc:  # every task fails with it, as in the stdlib
            result = MapResult(self._registry, len(items), callback, error_callback)
            _fail_from_caller(result, None, exc)
            return result
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

        An item that can't be pickled fails at its own position (see
        ``_chunks_for_piece``); the others run.  Ctrl-C here cancels the
        call (``_SinkRegistry.cancel``) before it propagates.
        """
        try:
            for start in range(0, len(items), chunksize):
                piece = items[start:start + chunksize]
                if not isinstance(piece, _SLICEABLE):
                    piece = list(piece)
                chunks = _chunks_for_piece(fn_blob, fn_name, call, piece, start, sink,
                                           timeout, retries, self._serialize)
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
        _check_options(timeout, retries)
        _check_chunksize(chunksize)
        _check_buffersize(buffersize)
        _check_callable(func)
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
        if isinstance(iterable, _SLICEABLE):
            # Sized and sliceable: chunk now, in the caller's thread.
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

    def _buffered_imap(self, fn_blob, fn_name, iterable, chunksize, buffersize,
                       iterator_class, timeout, retries, progress) -> IMapIterator:
        """``imap`` with *buffersize*: a feeder that takes input only as
        results are consumed (see ``_Window``)."""
        window = _Window(buffersize * (chunksize or 1))
        total = len(iterable) if hasattr(iterable, "__len__") else None
        result = _BUFFERED[iterator_class](self._registry, None,
                                           _progress_bar(progress, total))
        result._window = window
        pool = weakref.ref(self)

        def stopped() -> bool:
            # The stdlib's rule (gh-155477): once the pool leaves RUN, a
            # throttled feeder stops, so close(); join() cannot wait for a
            # consumer that will never come.
            alive = pool()
            return alive is None or alive._state != RUN

        self._backend.add_feeder()
        threading.Thread(
            target=_feed_chunks, name="PoolFeeder", daemon=True,
            args=(self._backend, self._registry, iterable, chunksize, fn_blob, fn_name,
                  m.CALL_MAP, result, timeout, retries, self._serialize,
                  (window, stopped))).start()
        return result


def _check_chunksize(chunksize: int | None) -> None:
    if chunksize is not None and chunksize < 1:
        raise ValueError("Chunksize must be 1+, not {0:n}".format(chunksize))


def _check_callable(func: Callable) -> None:
    if not callable(func):
        raise TypeError(f"{func!r} is not callable")


def _fail_from_caller(sink, position: int | None, exc: BaseException) -> None:
    """Fail the task at *position* of *sink* (all of them: None) with *exc*,
    a pickling error found in the caller's thread.

    A result with a ``callback`` or ``error_callback`` is failed from a
    short-lived thread: callbacks run in a pool thread, never in the thread
    that called ``apply_async``, which may hold a lock the callback takes
    (the stdlib runs this one in its task handler thread).
    """
    def fail() -> None:
        if position is None:
            sink.abort(exc)
        else:
            _report_failed(sink, position, exc)
            sink.deliver(position, [None], {0: exc})

    if getattr(sink, "_callback", None) is None and \
            getattr(sink, "_error_callback", None) is None:
        fail()
        return
    threading.Thread(target=fail, name="PoolErrorCallback", daemon=True).start()


def _report_failed(sink, position: int, exc: BaseException) -> None:
    """Tell the pool's instruments that a task failed before it reached the backend."""
    instruments = sink._core.instruments
    if instruments:
        instruments.tasks_failed(None, sink, position, 1, exc, time.monotonic())


def _check_buffersize(buffersize: int | None) -> None:
    if buffersize is not None and not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")


_WINDOW_POLL = 0.1   # seconds between checks that a throttled feeder's pool still runs


class _Window:
    """How many more input items a buffered imap's feeder may take.

    Starts at *size*; the feeder takes credits before it reads items, the
    iterator gives one back per result it yields.  So the items read but
    not yet yielded never exceed *size*.
    """

    def __init__(self, size: int):
        self._cond = threading.Condition(threading.Lock())
        self._free = size

    def take(self, want: int, whole: bool, stopped: Callable[[], bool]) -> int:
        """Wait for credits and take up to *want* (all *want* if *whole*).

        Returns 0 once *stopped()* is true.
        """
        with self._cond:
            need = want if whole else 1
            while self._free < need or stopped():
                if stopped():
                    return 0
                self._cond.wait(_WINDOW_POLL)
            taken = min(want, self._free)
            self._free -= taken
            return taken

    def give(self, n: int) -> None:
        with self._cond:
            self._free += n
            self._cond.notify()


class _GivesBackCredits:
    """Mixin of the iterators of a buffered imap: each result yielded (a
    value or a task's exception) gives its window a credit back."""

    _window: _Window
    _yielded: int

    def next(self, timeout: float | None = None) -> Any:
        before = self._yielded
        try:
            return super().next(timeout)  # type: ignore[misc]
        finally:
            if self._yielded > before:
                self._window.give(self._yielded - before)

    __next__ = next


class _BufferedIMapIterator(_GivesBackCredits, IMapIterator):
    pass


class _BufferedIMapUnorderedIterator(_GivesBackCredits, IMapUnorderedIterator):
    pass


_BUFFERED: dict[type, Any] = {IMapIterator: _BufferedIMapIterator,
                              IMapUnorderedIterator: _BufferedIMapUnorderedIterator}


def _window_slices(iterable: Iterable, chunksize: int | None, grow_limit,
                   window: _Window, stopped: Callable[[], bool]):
    """``iter_slices`` for a buffered imap: reads input only with credits."""
    it = iter(iterable)
    size = chunksize or 1
    while True:
        taken = window.take(size, chunksize is not None, stopped)
        if not taken:
            return
        piece = list(itertools.islice(it, taken))
        if len(piece) < taken:
            window.give(taken - len(piece))
        if not piece:
            return
        yield piece
        if chunksize is None:
            size = min(size * 2, max(1, grow_limit()), MAX_GROWN_CHUNKSIZE)


def _feed_chunks(backend, registry, iterable, chunksize, fn_blob, fn_name, call,
                 sink, timeout, retries, serialize, buffered=None) -> None:
    """Body of an imap feeder thread: consume the input lazily, submit chunks.

    An item that can't be pickled fails at its own position; an input
    iterator that raises delivers that exception at the position after the
    last item it produced, then ends the results (as the stdlib does).
    *buffered*, for ``buffersize``: ``(window, stopped)`` (``_window_slices``).
    """
    def grow_limit() -> int:
        seconds = backend.task_seconds(fn_blob)
        if seconds is None:
            return 256
        return max(1, int(TARGET_CHUNK_SECONDS / max(seconds, 1e-7)))

    start = 0
    try:
        try:
            pieces = (iter_slices(iterable, chunksize, grow_limit) if buffered is None
                      else _window_slices(iterable, chunksize, grow_limit, *buffered))
            for piece in pieces:
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
            _report_failed(sink, start, exc)
            sink.deliver(start, [None], {0: exc})
            start += 1
        sink.set_length(start)
    finally:
        backend.remove_feeder()


def _chunks_for_piece(fn_blob, fn_name, call, piece, start, sink, timeout,
                      retries, serialize) -> list[TaskChunk]:
    """The chunk of *piece*; if it can't be pickled, one chunk per item
    that can, and each item that can't fails at its own position with
    what pickle raised (as the stdlib fails that task)."""
    try:
        return [make_chunk(fn_blob, fn_name, call, piece, start, sink, timeout,
                           retries, serialize)]
    except Exception:
        pass
    chunks = []
    for offset, item in enumerate(piece):
        try:
            chunks.append(make_chunk(fn_blob, fn_name, call, [item], start + offset,
                                     sink, timeout, retries, serialize))
        except Exception as exc:
            _fail_from_caller(sink, start + offset, exc)
    return chunks
