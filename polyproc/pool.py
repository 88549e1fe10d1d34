"""``polyproc.pool``: the stdlib's ``multiprocessing.pool`` API on polyproc's scheduler.

``Pool`` is polyproc's own (see _pool.py for the API layer, _scheduler.py
for the worker processes, ARCHITECTURE.md for the picture); it is not a
wrapper around ``multiprocessing.pool.Pool``.  The result classes keep the
stdlib's names.
"""
from ._pool.api import Pool
from ._pool.results import (ApplyResult, AsyncResult, IMapIterator,
                       IMapUnorderedIterator, MapResult)
from ._pool._backends.thread import ThreadPool

__all__ = ["Pool", "ThreadPool", "ApplyResult", "AsyncResult", "MapResult",
           "IMapIterator", "IMapUnorderedIterator", "MaybeEncodingError"]

# The stdlib's state names, for code that reads them.
RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"

from ._public import fixup_module_metadata as _fixup

_fixup(__name__, globals())
del _fixup


def __getattr__(name: str):
    # ``MaybeEncodingError`` is the stdlib's class itself, so that both
    # ``except multiprocessing.pool.MaybeEncodingError`` and, after
    # ``import polyproc as multiprocessing``, ``except
    # multiprocessing.pool.MaybeEncodingError`` catch what a Pool raises for
    # a result that cannot be pickled (``UnpicklableResultError``, a
    # subclass).  Imported on first use: multiprocessing.pool costs ~2 ms.
    if name == "MaybeEncodingError":
        from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]
        return MaybeEncodingError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
