"""Result objects handed to the caller: ApplyResult, MapResult, IMapIterator.

They mirror ``multiprocessing.pool`` (same names, methods, blocking and
error behaviour) and are *sinks* for the scheduler: it calls
``deliver(start, values, errors)`` from its own thread whenever a chunk of
tasks has finished, with ``errors`` mapping positions (relative to
``start``) to the exception each failed task raised.  ``abort(exc)`` says
nothing more will come (the pool was terminated, or broke): every task not
yet delivered fails with *exc*, so no ``get()`` ever waits forever.

Differences from the stdlib, all where the stdlib would hang or mislead:

* ``MapResult`` raises the error of the *lowest-index* failed task (the
  stdlib raises whichever arrived first): the same run gives the same error.
* Ctrl-C while waiting in ``get``/``wait``/``next`` cancels that call
  before re-raising ``KeyboardInterrupt``: its tasks stop (no orphans,
  no worker stuck in an interrupted task) and the result fails with
  ``ProcessError`` for any other waiter; the pool keeps running (the
  stdlib leaves the call running).
* A terminated pool fails pending results instead of leaving ``get()``
  blocked forever.
* Waiting on an unfinished result in a forked child raises
  ``InheritedPoolError`` (nothing there would ever finish it).
"""
from __future__ import annotations

import collections
import sys
import threading
import time
import traceback
from typing import Any, Callable, Generic, TypeVar

from .. import _public
from . import ownership as _ownership
from .._exceptions import TimeoutError

__all__ = ["ApplyResult", "AsyncResult", "MapResult", "IMapIterator",
           "IMapUnorderedIterator"]

_completion_lock = threading.Lock()

# The type of a task's result, for type checkers (as typeshed's
# ``multiprocessing.pool.ApplyResult[_T]``).
_T = TypeVar("_T")


def _run_callback(callback: Callable, arg: Any) -> None:
    """Run a user callback in the scheduler thread; never let it kill that thread."""
    try:
        callback(arg)
    except BaseException:
        print("Exception in polyproc pool callback:", file=sys.stderr)
        traceback.print_exc()


class _Sink:
    """What every result object shares: registration with the pool core."""

    def __init__(self, core, length: int | None, progress=None):
        self._core = core
        self._progress = progress
        self._pending = length  # tasks not delivered yet (None: not known yet)
        self.cancelled = False  # set by the registry's cancel(): stop feeding it
        core.register_sink(self)
        if progress is not None:  # a progress.ProgressBar: counts our tasks
            progress.attach(core.instruments, self)

    def _finished(self) -> None:
        self._core.unregister_sink(self)
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def _interrupted(self) -> None:
        """Ctrl-C while waiting: cancel this call, then let the interrupt propagate."""
        self._core.cancel(self)

    def _check_owner(self) -> None:
        _ownership.check_owner(self._core.pid, "this Pool's result")


class ApplyResult(_Sink, Generic[_T]):
    """The result of ``apply_async``: one task."""

    def __init__(self, core, callback=None, error_callback=None, length: int = 1,
                 progress=None):
        super().__init__(core, length, progress)
        # Completion is a lock held from creation until the result is set:
        # waiters acquire it (with their timeout) and release it at once,
        # so every waiter wakes.  A lock costs a tenth of a threading.Event
        # (Condition + Lock) to create, and 10,000 apply_async calls create
        # 10,000 of them.
        self._done = False
        self._completing = False
        self._done_lock = threading.Lock()
        self._done_lock.acquire()
        self._callback = callback
        self._error_callback = error_callback
        self._success = True
        self._value: Any = None

    def ready(self) -> bool:
        """Return whether the call has completed."""
        return self._done

    def successful(self) -> bool:
        """Return whether the call completed without raising an exception.

        Raises ``ValueError`` if the result is not ready.
        """
        if not self._done:
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is available or until *timeout* seconds pass.

        Ctrl-C while waiting cancels the call (its tasks stop, the pool runs
        on) and re-raises ``KeyboardInterrupt``.  Raises
        ``InheritedPoolError`` in a forked child if the result is unfinished.
        """
        if self._done:
            return
        self._check_owner()
        try:
            if self._done_lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
                self._done_lock.release()
        except KeyboardInterrupt:
            self._interrupted()
            raise

    def get(self, timeout: float | None = None) -> _T:
        """Return the result when it arrives.

        Blocks until then, or raises ``multiprocessing.TimeoutError`` after
        *timeout* seconds.  If the call raised, that exception is re-raised,
        with the worker's traceback as its ``__cause__``; a call cancelled by
        Ctrl-C raises ``ProcessError``.  Ctrl-C and forked children: see
        ``wait()``.
        """
        if not self._done:
            self.wait(timeout)
            if not self._done:
                raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def deliver(self, start: int, values: list, errors: dict) -> None:
        if self._completing:
            return
        if errors:
            self._success = False
            self._value = errors[min(errors)]
        else:
            self._value = values[0]
        self._complete()

    def abort(self, exc: BaseException) -> None:
        if not self._done:
            self._success = False
            self._value = exc
            self._complete()

    def _complete(self) -> None:
        # deliver() (scheduler thread) and abort() (a terminating thread)
        # may race: exactly one of them completes the result.
        with _completion_lock:
            if self._completing:
                return
            self._completing = True
        if self._success:
            if self._callback is not None:
                _run_callback(self._callback, self._value)
        elif self._error_callback is not None:
            _run_callback(self._error_callback, self._value)
        self._done = True
        self._done_lock.release()
        self._finished()


AsyncResult = ApplyResult


class MapResult(ApplyResult[list[_T]]):
    """The result of ``map_async``/``starmap_async``: a list, in input order."""

    _pending: int   # the length is known from the start

    def __init__(self, core, length: int, callback=None, error_callback=None,
                 progress=None):
        super().__init__(core, callback, error_callback, length, progress)
        self._value = [None] * length
        self._first_error: tuple[int, BaseException] | None = None
        self._lock = threading.Lock()
        if length == 0:
            self._complete()

    def deliver(self, start: int, values: list, errors: dict) -> None:
        with self._lock:
            if self._done:
                return
            if values:
                self._value[start:start + len(values)] = values
            if errors:
                index = start + min(errors)
                if self._first_error is None or index < self._first_error[0]:
                    self._first_error = (index, errors[min(errors)])
            self._pending -= len(values)
            if self._pending > 0:
                return
            if self._first_error is not None:
                self._success = False
                self._value = self._first_error[1]
        self._complete()

    def abort(self, exc: BaseException) -> None:
        with self._lock:
            if self._done:
                return
            self._success = False
            self._value = exc
        self._complete()


class IMapIterator(_Sink, Generic[_T]):
    """The iterator ``imap`` returns: results in input order, as they come.

    A task that raised re-raises its exception at its own position; the
    iteration can go on past it.
    """

    _ordered = True

    def __init__(self, core, length: int | None = None, progress=None):
        super().__init__(core, length, progress)
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque = collections.deque()  # (ok, value) ready to yield
        self._unordered: dict[int, tuple[bool, Any]] = {}
        self._next_index = 0        # next position to move into _items (ordered)
        self._yielded = 0
        self._length = length       # total tasks, once known
        self._abort: BaseException | None = None

    def __iter__(self) -> IMapIterator[_T]:
        return self

    def next(self, timeout: float | None = None) -> _T:
        """Return the next result, waiting at most *timeout* seconds for it.

        Raises ``multiprocessing.TimeoutError`` when it does not come in
        time, ``StopIteration`` after the last result.  Ctrl-C while waiting
        cancels the call and re-raises ``KeyboardInterrupt`` (results that
        had arrived stay available, then ``ProcessError``); in a forked child
        waiting raises ``InheritedPoolError``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._exhausted():
                    raise StopIteration
                if self._items:
                    break  # _exhausted() queued the abort error: no wait for it
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                self._check_owner()
                try:
                    self._cond.wait(remaining)
                except KeyboardInterrupt:
                    self._cond.release()
                    try:
                        self._interrupted()
                    finally:
                        self._cond.acquire()
                    raise
            ok, value = self._items.popleft()
            self._yielded += 1
        if ok:
            return value
        raise value

    __next__ = next

    def _exhausted(self) -> bool:
        if self._abort is not None:
            # Everything not yet yielded fails with the abort error, once.
            if self._length is None or self._yielded < self._length:
                self._items.append((False, self._abort))
                self._length = self._yielded + 1
                return False
            return True
        return self._length is not None and self._yielded >= self._length

    def set_length(self, length: int) -> None:
        """The feeder has consumed the whole input: *length* tasks in all."""
        with self._cond:
            self._length = length
            self._pending = length - self._delivered_count()
            if self._progress is not None and self._progress.total is None:
                self._progress.total = length
                self._progress.refresh()
            if self._pending <= 0:
                self._cond.notify_all()
                self._finished_unlocked()

    def _delivered_count(self) -> int:
        return self._yielded + len(self._items) + len(self._unordered)

    def deliver(self, start: int, values: list, errors: dict) -> None:
        with self._cond:
            if self._abort is not None:
                return
            for offset, value in enumerate(values):
                err = errors.get(offset)
                entry = (True, value) if err is None else (False, err)
                if self._ordered:
                    self._unordered[start + offset] = entry
                else:
                    self._items.append(entry)
            if self._ordered:
                while self._next_index in self._unordered:
                    self._items.append(self._unordered.pop(self._next_index))
                    self._next_index += 1
            self._cond.notify_all()
            if self._length is not None and self._delivered_count() >= self._length:
                self._finished_unlocked()

    def abort(self, exc: BaseException) -> None:
        with self._cond:
            if self._abort is None and not (
                    self._length is not None and self._delivered_count() >= self._length):
                self._abort = exc
                # Results that arrived in order stay available before the error.
                self._cond.notify_all()
        self._finished()

    def _finished_unlocked(self) -> None:
        self._core.unregister_sink(self)
        if self._progress is not None:
            self._progress.close()
            self._progress = None


class IMapUnorderedIterator(IMapIterator):
    """The iterator ``imap_unordered`` returns: results as they complete."""

    _ordered = False


# Public as ``polyproc.pool.X`` (reprs, pickles), whichever module made them.
_public.fixup_module_metadata("polyproc.pool", {
    "ApplyResult": ApplyResult, "MapResult": MapResult, "IMapIterator": IMapIterator,
    "IMapUnorderedIterator": IMapUnorderedIterator})
