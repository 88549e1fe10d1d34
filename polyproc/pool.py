"""``polyproc.pool``: the stdlib's ``multiprocessing.pool`` API on polyproc's scheduler.

``Pool`` is polyproc's own (``_pool/api.py`` for the API layer,
``_pool/backend.py`` for the engines it runs on, ARCHITECTURE.md for the
picture); it is not a wrapper around ``multiprocessing.pool.Pool``.  The
result classes keep the stdlib's names.  This module only re-exports.
"""
import typing as _typing

from ._pool.api import Pool, ThreadPool
# The stdlib's state names, for code that reads them.
from ._pool.backend import CLOSE as CLOSE
from ._pool.backend import RUN as RUN
from ._pool.backend import TERMINATE as TERMINATE
from ._pool.results import (ApplyResult, AsyncResult, IMapIterator,
                            IMapUnorderedIterator, MapResult)

__all__ = ["Pool", "ThreadPool", "ApplyResult", "AsyncResult", "MapResult",
           "IMapIterator", "IMapUnorderedIterator", "MaybeEncodingError"]


if _typing.TYPE_CHECKING:
    # The stdlib's class, which typeshed leaves out (see __getattr__).
    class MaybeEncodingError(Exception):
        exc: str
        value: str


def __getattr__(name: str) -> _typing.Any:
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
