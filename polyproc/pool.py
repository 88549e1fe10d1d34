"""``polyproc.pool``: the stdlib's ``multiprocessing.pool`` API on polyproc's scheduler.

``Pool`` is polyproc's own (see _pool.py for the API layer, _scheduler.py
for the worker processes, ARCHITECTURE.md for the picture); it is not a
wrapper around ``multiprocessing.pool.Pool``.  The result classes keep the
stdlib's names.
"""
from ._pool import Pool
from ._results import (ApplyResult, AsyncResult, IMapIterator,
                       IMapUnorderedIterator, MapResult)
from ._thread_backend import ThreadPool

__all__ = ["Pool", "ThreadPool", "ApplyResult", "AsyncResult", "MapResult",
           "IMapIterator", "IMapUnorderedIterator"]

# The stdlib's state names, for code that reads them.
RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"

from ._public import fixup_module_metadata as _fixup

_fixup(__name__, globals())
del _fixup
