"""What ``insights=``, ``timeline=`` and ``timeline_events=`` attach to a pool.

One ``Observers`` per Pool, ThreadPool or Executor: it checks the three
options, attaches an ``Insights`` and a ``Timeline`` to the pool's
instruments (before its workers start, so their start-up is recorded), and
answers ``insights()`` and ``timeline(path)``.  The timeline file given as
``timeline="run.json"`` is written by ``write_on_close``, which the pool
calls once its workers are gone (join, terminate, shutdown) and, through a
finalizer, at interpreter exit if the pool is still open then.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Union

from .._pool.instruments import Instruments
from .insights import Insights
from .timeline import DEFAULT_MAX_EVENTS, Timeline, check_max_events

__all__ = ["Observers", "TimelineOption", "DEFAULT_MAX_EVENTS"]

# ``timeline=``: a file to write when the pool is done, True (record, write
# with ``pool.timeline(path)``), or None/False (record nothing).
TimelineOption = Union[str, "os.PathLike[str]", bool, None]


class Observers:
    """The insights and timeline of one pool (see the module docstring)."""

    def __init__(self, instruments: Instruments, insights: bool,
                 timeline: TimelineOption, timeline_events: int) -> None:
        """Check the options and attach what they ask for to *instruments*.

        Raises ``TypeError`` for a *timeline* that is not a path, a bool or
        None, ``ValueError`` for *timeline_events* below 1.
        """
        if not isinstance(timeline, (str, os.PathLike, bool, type(None))):
            raise TypeError(f"timeline must be a file path, True or None, not {timeline!r}")
        check_max_events(timeline_events)
        self._path = None if isinstance(timeline, (bool, type(None))) \
            else os.path.abspath(os.fspath(timeline))
        self._insights = Insights() if insights else None
        self._timeline = Timeline(timeline_events) if timeline else None
        for observer in (self._insights, self._timeline):
            if observer is not None:
                instruments.add_instrument(observer)

    def insights(self) -> dict[str, Any]:
        """The pool's insights; ``ValueError`` unless made with ``insights=True``."""
        if self._insights is None:
            raise ValueError("this pool counts nothing: make it with insights=True "
                             "to get insights() (off by default: it costs a few "
                             "microseconds per chunk, see docs/observe.md)")
        return self._insights.snapshot()

    def write_timeline(self, path: str | os.PathLike[str]) -> None:
        """Write the timeline recorded so far to *path*.

        Raises ``ValueError`` if the pool records no timeline, ``OSError``
        if the file cannot be written.
        """
        if self._timeline is None:
            raise ValueError("this pool records no timeline: make it with "
                             "timeline=True (then write it with timeline(path)) or "
                             "timeline='run.json' (written when the pool is done)")
        self._timeline.write(path)

    def pool_stopped(self, reason: str) -> None:
        """The pool is done (join after close: ``"shut down"``, or
        ``"terminated"``): its insights stop counting time, its timeline's
        counter of tasks queued and in flight drops to zero."""
        if self._insights is not None:
            self._insights.pool_stopped(reason)
        if self._timeline is not None:
            self._timeline.pool_stopped()

    def write_on_close(self) -> None:
        """Write the ``timeline=`` file, if one was given; warn if that fails.

        Never raises: it runs in ``join``/``terminate`` and at exit, where a
        full disk must not turn into a failed shutdown.
        """
        if self._path is None or self._timeline is None:
            return
        try:
            self._timeline.write(self._path)
        except OSError as error:
            warnings.warn(f"polyproc: could not write the pool's timeline to "
                          f"{self._path}: {error}", RuntimeWarning, stacklevel=2)
