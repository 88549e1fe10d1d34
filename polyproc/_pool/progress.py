"""``progress=True``: a tqdm bar of one call, fed by the pool's instruments.

The bar is an ``Instrument`` (instruments.py) that counts the tasks of its
call as their outcomes come back, failures included: bars count completed
tasks, not submitted ones, so their rate and ETA are the pool's.  Each task
is counted once, whatever happened on the way: a task that is retried
(``retries=``) or requeued after its worker died is counted when its one
outcome comes back (``chunk_finished``, or ``chunk_failed`` for the task
blamed for a death or a timeout), never at the attempts that failed.  The
call's result object attaches the bar when it is made, before any task is
submitted, and closes it when the call is over, whether it completed,
failed or was aborted (Ctrl-C: ``results._Sink``); closing detaches it,
so a pool without a bar running goes back to firing no events.

A Pool's call is one result object (one ``call_id``).  An
``Executor.map`` is one ``FutureSink`` per chunk: the bar counts each of
them (``add_call``), keeping each alive until its tasks are counted so
that its ``id()`` cannot be reused by another call meanwhile.

Nested bars.  A task that loops over ``polyproc.progress(items)``
(task_progress.py) reports to the scheduler, which fires ``task_progress``;
the bar of the task's call draws one nested bar per loop, below itself, at
the first free row (tqdm's own choice of ``position``, made for each bar
here in the parent, where all the bars are: no ``position=`` for the user
to pass).  A nested bar closes (and is erased) when its loop ends, when
its task's outcome comes back, when its worker exits, or at the latest
with the call's bar.  All of it under one lock: events come from the
PoolScheduler thread while a caller's thread may close the bar.

tqdm is imported only when a bar is asked for.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import threading
from typing import Any, Iterable, Iterator, TextIO

from .instruments import (ChunkFailed, ChunkFinished, Instrument, TaskProgress,
                          WorkerExited)

__all__ = ["ProgressBar", "progress_bar", "plain_bar", "bars_cleared"]


class _Nested:
    """One nested bar: a ``polyproc.progress`` loop of one task."""

    __slots__ = ("bar", "chunk_id")

    def __init__(self, bar: Any, chunk_id: int):
        self.bar = bar
        self.chunk_id = chunk_id


class ProgressBar(Instrument):
    """The tqdm bar of one call, counting its tasks as they complete.

    ``attach`` it to the pool's ``Instruments`` with the call's result
    object; ``close()`` detaches it.  Updates come from the PoolScheduler
    thread (and, for a task that failed at submission, the caller's), as
    the result's own deliveries do.
    """

    def __init__(self, total: int | None):
        self.bar = _progress_bar_class()(total=total, file=sys.stderr, unit="task",
                                         miniters=1)
        # call_id -> [the sink, its tasks not counted yet (None: a Pool's
        # call, kept until the bar closes)].
        self._calls: dict[int, list] = {}
        self._instruments: Any = None
        self._lock = threading.Lock()
        self._nested: dict[tuple[int, int], _Nested] = {}  # by (pid, bar number)
        self._closed = False

    def attach(self, instruments: Any, call: Any = None) -> None:
        """Count the tasks of *call* (its result object) among *instruments*' events.

        Without *call*, the calls to count are added later (``add_call``).
        """
        if call is not None:
            self._calls[id(call)] = [call, None]
        self._instruments = instruments
        instruments.add_instrument(self)

    def add_call(self, sink: Any, tasks: int) -> None:
        """Count the *tasks* tasks of *sink* too (a chunk of ``Executor.map``).

        Before its chunk is submitted, so that no outcome is missed.
        """
        self._calls[id(sink)] = [sink, tasks]

    def count(self, tasks: int) -> None:
        """Count *tasks* that ended without an event (an Executor's call that
        could not be pickled fails at submission, unseen by the scheduler)."""
        with self._lock:
            if not self._closed:
                self.bar.update(tasks)

    def _counted(self, call_id: int, tasks: int) -> bool:
        """Count *tasks* outcomes of *call_id*; False if it is not this bar's call."""
        entry = self._calls.get(call_id)
        if entry is None:
            return False
        if entry[1] is not None:
            entry[1] -= tasks
            if entry[1] <= 0:
                self._calls.pop(call_id, None)  # (close() may have cleared it)
        with self._lock:
            if not self._closed:
                self.bar.update(tasks)
        if not self._calls and self.bar.total is not None and self.bar.n >= self.bar.total:
            # An Executor.map whose every call is counted: done, even if
            # its iterator is never consumed (its generator, never
            # started, would never run the ``finally`` that closes it).
            self.close()
        return True

    def chunk_finished(self, info: ChunkFinished) -> None:
        if self._counted(info.call_id, info.tasks):
            self._close_nested_of_chunk(info.chunk_id)

    def chunk_failed(self, info: ChunkFailed) -> None:
        if self._counted(info.call_id, info.tasks) and info.chunk_id is not None:
            self._close_nested_of_chunk(info.chunk_id)

    # -- nested bars: the tasks' own polyproc.progress loops ---------------
    def task_progress(self, info: TaskProgress) -> None:
        if info.call_id not in self._calls:
            return
        key = (info.pid, info.bar)
        with self._lock:
            if self._closed:
                return
            nested = self._nested.get(key)
            if nested is None:
                if info.closed and info.n == 0:
                    return  # a loop over nothing: no bar to flash
                nested = self._nested[key] = _Nested(_progress_bar_class()(
                    total=info.total, desc=_nested_desc(info), file=sys.stderr,
                    leave=False, miniters=1), info.chunk_id)
            bar = nested.bar
            if info.total != bar.total:
                bar.total = info.total
            bar.update(info.n - bar.n)
            if info.closed:
                del self._nested[key]
                bar.close()

    def worker_exited(self, info: WorkerExited) -> None:
        # A worker that died (or was killed to cancel a call) sends no
        # last report: its loops end here.
        self._close_nested_where(lambda key, nested: key[0] == info.pid)

    def _close_nested_of_chunk(self, chunk_id: int) -> None:
        if self._nested:
            self._close_nested_where(lambda key, nested: nested.chunk_id == chunk_id)

    def _close_nested_where(self, ended) -> None:
        with self._lock:
            for key in [k for k, nested in self._nested.items() if ended(k, nested)]:
                self._nested.pop(key).bar.close()

    # The total is set when an ``imap`` over an iterator of unknown length
    # has consumed it (``IMapIterator.set_length``).
    @property
    def total(self) -> int | None:
        return self.bar.total

    @total.setter
    def total(self, total: int) -> None:
        self.bar.total = total

    def refresh(self) -> None:
        with self._lock:
            if not self._closed:
                self.bar.refresh()

    def close(self) -> None:
        """Detach from the pool, erase the nested bars, then close this one.

        Idempotent; after it, events that were already under way change
        nothing on the screen.
        """
        if self._instruments is not None:
            try:
                self._instruments.remove_instrument(self)
            except KeyError:
                pass  # removed already, as it raised
            self._instruments = None
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Nested bars first: they sit below this one, which then
            # leaves its final line and the cursor on the line after it.
            for nested in self._nested.values():
                nested.bar.close()
            self._nested.clear()
            self.bar.close()
        self._calls.clear()


def _nested_desc(info: TaskProgress) -> str | None:
    """The label of a nested bar: the loop's own, else the task's position."""
    if info.desc is not None or info.position is None:
        return info.desc
    return f"task {info.position}"


def progress_bar(progress: bool, total: int | None) -> ProgressBar | None:
    """A bar of *total* tasks if *progress* is true, else None."""
    if not progress:
        return None
    return ProgressBar(total)


def plain_bar(iterable: Iterable, total: int | None, desc: str | None) -> Any:
    """A tqdm bar over *iterable* in this process (``polyproc.progress``
    outside a pool worker)."""
    return _progress_bar_class()(iterable, total=total, desc=desc, file=sys.stderr)


@contextlib.contextmanager
def bars_cleared(file: TextIO) -> Iterator[None]:
    """While other text is written to *file* (a hang report): the bars on
    the terminal are erased, then drawn again below it (tqdm's
    ``external_write_mode``), so that neither is drawn over the other.

    Nothing to do, and tqdm is not imported, if it has not been: then there
    is no bar.
    """
    if "tqdm" not in sys.modules:
        yield
        return
    with _progress_bar_class().external_write_mode(file=file):
        yield


@functools.cache
def _progress_bar_class():
    """tqdm without its monitor thread.

    The monitor would outlive the call by up to 10 s, and a fork from a
    process with a thread running is unsafe (Python 3.12+ warns at the next
    ``Pool()``).  It only forces a refresh when tqdm's dynamic ``miniters``
    grew too large; with ``miniters=1`` (one update per batch of results)
    there is nothing for it to do.
    """
    from tqdm import tqdm  # imported only when asked for

    class PolyprocProgressBar(tqdm):
        monitor_interval = 0

    return PolyprocProgressBar
