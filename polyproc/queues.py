"""``polyproc.queues``: ``Queue``, ``JoinableQueue`` and ``SimpleQueue``.

Same names, signatures and meaning as ``multiprocessing.queues``; the
implementation and its design notes are in ``polyproc/_queue/`` (the
classes in ``_queue/queue.py``, the shared-memory ring under them in
``_queue/ring.py``) and docs/queues.md.  This module only re-exports.
"""
from __future__ import annotations

# Empty and Full (the queue module's, as in the stdlib's) and QueueReader:
# re-exported for code that imports them from here.
from queue import Empty as Empty
from queue import Full as Full
from typing import Any

from ._queue.queue import JoinableQueue, Queue, SimpleQueue
from ._queue.queue import QueueReader as QueueReader

__all__ = ["Queue", "SimpleQueue", "JoinableQueue"]   # as the stdlib's


def __getattr__(name: str) -> Any:
    # Other names of the stdlib module (``_ForkingPickler``, ``is_exiting``...)
    # that stdlib code may import from here.
    import multiprocessing.queues as _std
    try:
        return getattr(_std, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
