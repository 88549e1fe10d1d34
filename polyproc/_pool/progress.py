"""The progress bar of ``map``/``imap``/``starmap`` with ``progress=True`` (tqdm, on stderr)."""
from __future__ import annotations

import functools
import sys

__all__ = ["progress_bar"]


def progress_bar(progress: bool, total: int | None):
    if not progress:
        return None
    return progress_bar_class()(total=total, file=sys.stderr, unit="task", miniters=1)


@functools.cache
def progress_bar_class():
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
