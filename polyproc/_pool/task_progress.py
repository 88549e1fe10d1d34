"""``polyproc.progress(iterable)``: a task's own progress, shown by the parent.

Called inside a task that a pool worker runs, it yields the items of
*iterable* and reports how many have been yielded to the pool's scheduler,
through the worker's own pipe (a ``messages.TaskProgress``); the parent
draws it as a bar nested under the bar of the call (``progress=True``,
progress.py), at a position polyproc chooses: no ``position=`` to juggle,
which is what tqdm cannot do across processes (tqdm#1609).

Why through the scheduler's pipe, not a queue or shared memory: the pipe
is there already, read all the time by the one thread that knows which
call a chunk belongs to and when a worker dies (the nested bar must close
then).  What it costs: one small message when the loop starts, at most one
per ``REPORT_SECONDS`` while it runs (a clock reading per item decides),
and one when it ends.

Anywhere else (the main process, a ``ThreadPool``'s thread, a plain
``Process``, a thread a task started) it is a plain tqdm bar on stderr.

This module is imported by ``import polyproc``: it imports nothing of
polyproc and nothing heavy (tqdm only when a plain bar is made).
"""
from __future__ import annotations

import itertools
import threading
import time
from typing import Callable, Iterable, Iterator, TypeVar

__all__ = ["progress", "install_reporter", "REPORT_SECONDS"]

_T = TypeVar("_T")

REPORT_SECONDS = 0.1  # at most one update per bar per this, plus the last

# Set by a pool worker's loop (worker.py) for the life of the process:
# ``report(bar, n, total, desc, closed)`` sends one update to the scheduler
# and returns False once it cannot (the parent is gone).  None elsewhere.
_reporter: Callable[[int, int, int | None, str | None, bool], bool] | None = None
_bar_numbers = itertools.count(1)


def install_reporter(report: Callable[[int, int, int | None, str | None, bool], bool]
                     ) -> None:
    """Make ``progress()`` in this process report through *report* (a pool worker)."""
    global _reporter
    _reporter = report


def progress(iterable: Iterable[_T], total: int | None = None,
             desc: str | None = None) -> Iterator[_T]:
    """Yield the items of *iterable*, showing how far the loop has gone.

    In a task run by a ``Pool`` or ``Executor`` worker, the progress goes to
    the parent, which shows it as a bar nested under the bar of the call
    made with ``progress=True`` (without it, the updates are dropped in the
    parent; the items are yielded all the same).  The nested bar closes
    when the loop ends, when the task ends, or when its worker dies.
    Elsewhere (the main process, a ``ThreadPool``, a thread a task started)
    it is a plain tqdm bar on stderr (which ``TQDM_DISABLE=1`` turns off,
    with tqdm 4.66 and later).

    *total* defaults to ``len(iterable)`` when it has one; *desc* labels
    the bar.  Never raises because of the reporting: if the parent can no
    longer be told, the items still come.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except (TypeError, AttributeError):
            total = None
    report = _reporter
    if report is None or threading.current_thread() is not threading.main_thread():
        # Not in the thread that runs a pool worker's tasks (the only one
        # that may write to its pipe): a bar of this process.
        return _plain_bar(iterable, total, desc)
    return _reported(iterable, total, desc, report)


def _reported(iterable: Iterable[_T], total: int | None, desc: str | None,
              report: Callable[[int, int, int | None, str | None, bool], bool]
              ) -> Iterator[_T]:
    bar = next(_bar_numbers)
    n = 0
    alive = report(bar, 0, total, desc, False)
    monotonic = time.monotonic
    next_report = monotonic() + REPORT_SECONDS
    try:
        for item in iterable:
            yield item
            n += 1
            if alive and monotonic() >= next_report:
                alive = report(bar, n, total, desc, False)
                next_report = monotonic() + REPORT_SECONDS
    finally:
        # The last word, whether the loop ended, raised or was left early.
        if alive:
            report(bar, n, total, desc, True)


def _plain_bar(iterable: Iterable[_T], total: int | None,
               desc: str | None) -> Iterator[_T]:
    from .progress import plain_bar  # tqdm is imported only now
    return iter(plain_bar(iterable, total, desc))
