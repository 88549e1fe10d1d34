"""``progress=True``: a tqdm bar of one call, fed by the pool's instruments.

The bar is an ``Instrument`` (instruments.py) that counts the tasks of its
call as their outcomes come back, failures included: bars count completed
tasks, not submitted ones, so their rate and ETA are the pool's.  The
call's result object attaches the bar when it is made, before any task is
submitted, and closes it when the call is over, whether it completed,
failed or was aborted (``results._Sink``); closing detaches it, so a pool
without a bar running goes back to firing no events.

tqdm is imported only when a bar is asked for.
"""
from __future__ import annotations

import functools
import sys
from typing import Any

from .instruments import ChunkFailed, ChunkFinished, Instrument

__all__ = ["ProgressBar", "progress_bar"]


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
        self.call_id: int | None = None
        self._instruments: Any = None

    def attach(self, instruments: Any, call: Any) -> None:
        """Count the tasks of *call* (its result object) among *instruments*' events."""
        self.call_id = id(call)
        self._instruments = instruments
        instruments.add_instrument(self)

    def chunk_finished(self, info: ChunkFinished) -> None:
        if info.call_id == self.call_id:
            self.bar.update(info.tasks)

    def chunk_failed(self, info: ChunkFailed) -> None:
        if info.call_id == self.call_id:
            self.bar.update(info.tasks)

    # The total is set when an ``imap`` over an iterator of unknown length
    # has consumed it (``IMapIterator.set_length``).
    @property
    def total(self) -> int | None:
        return self.bar.total

    @total.setter
    def total(self, total: int) -> None:
        self.bar.total = total

    def refresh(self) -> None:
        self.bar.refresh()

    def close(self) -> None:
        if self._instruments is not None:
            try:
                self._instruments.remove_instrument(self)
            except KeyError:
                pass  # removed already, as it raised
            self._instruments = None
        self.bar.close()


def progress_bar(progress: bool, total: int | None) -> ProgressBar | None:
    """A bar of *total* tasks if *progress* is true, else None."""
    if not progress:
        return None
    return ProgressBar(total)


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
