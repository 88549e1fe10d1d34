"""Feeding a pool from an iterable: the feeder thread of ``imap``, and its throttle.

An ``imap`` over an input of unknown length (a generator) is cut into
chunks lazily, by a ``PoolFeeder`` thread (``feed_chunks``), so the caller
gets its iterator at once.  With ``buffersize`` (``Window``) the feeder
takes input only as the caller consumes results.  An item that cannot be
pickled fails at its own position (``chunks_for_piece``); such failures
found in the caller's thread are delivered from another thread when the
result has callbacks (``fail_from_caller``).
"""
from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable, Iterable

from .chunks import (MAX_GROWN_CHUNKSIZE, TARGET_CHUNK_SECONDS, TaskChunk,
                     iter_slices, make_chunk)
from .results import IMapIterator, IMapUnorderedIterator

__all__ = ["feed_chunks", "chunks_for_piece", "fail_from_caller", "Window", "BUFFERED"]


def fail_from_caller(sink, position: int | None, exc: BaseException) -> None:
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


_WINDOW_POLL = 0.1   # seconds between checks that a throttled feeder's pool still runs


class Window:
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

    _window: Window
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


BUFFERED: dict[type, Any] = {IMapIterator: _BufferedIMapIterator,
                              IMapUnorderedIterator: _BufferedIMapUnorderedIterator}


def window_slices(iterable: Iterable, chunksize: int | None, grow_limit,
                   window: Window, stopped: Callable[[], bool]):
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


def feed_chunks(backend, registry, iterable, chunksize, fn_blob, fn_name, call,
                 sink, timeout, retries, transport, buffered=None) -> None:
    """Body of an imap feeder thread: consume the input lazily, submit chunks.

    An item that can't be pickled fails at its own position; an input
    iterator that raises delivers that exception at the position after the
    last item it produced, then ends the results (as the stdlib does).
    *buffered*, for ``buffersize``: ``(window, stopped)`` (``window_slices``).
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
                      else window_slices(iterable, chunksize, grow_limit, *buffered))
            for piece in pieces:
                if registry.terminated or sink.cancelled:
                    return
                backend.submit(chunks_for_piece(fn_blob, fn_name, call, piece, start,
                                                 sink, timeout, retries, transport))
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


def chunks_for_piece(fn_blob, fn_name, call, piece, start, sink, timeout,
                      retries, transport) -> list[TaskChunk]:
    """The chunk of *piece*; if it can't be pickled, one chunk per item
    that can, and each item that can't fails at its own position with
    what pickle raised (as the stdlib fails that task)."""
    try:
        return [make_chunk(fn_blob, fn_name, call, piece, start, sink, timeout,
                           retries, transport)]
    except Exception:
        pass
    chunks = []
    for offset, item in enumerate(piece):
        try:
            chunks.append(make_chunk(fn_blob, fn_name, call, [item], start + offset,
                                     sink, timeout, retries, transport))
        except Exception as exc:
            fail_from_caller(sink, start + offset, exc)
    return chunks
