"""Chunks of tasks: what the API layer hands to a backend.

A ``TaskChunk`` is the unit of dispatch: one function, a run of consecutive
items of one call (``start`` is the position of its first item in that
call), the sink that receives their outcomes, and the per-task options
(``timeout``, ``retries``).  It keeps the original item objects as well as
their serialized payload: when a worker dies half-way through a chunk, the
unfinished part is serialized again from the objects (the payload may
already have been consumed, e.g. its shared-memory segments unlinked by the
worker that loaded them).

Chunking policy (``auto_chunksize``) when the caller gives no ``chunksize``:
a call of known length is cut into about ``CHUNKS_PER_WORKER`` chunks per
worker.  That is 8 times finer than the stdlib's ``len / (4 * workers)``:
the tail of a map of slow tasks then balances to within one small chunk,
and the scheduler's batching (several chunks per message, see
_pool/_backends/process/scheduler.py) takes away the cost of the extra chunks when tasks are
tiny.  A call of unknown length (``imap`` over a generator) starts with
chunks of one item and doubles them, up to what the scheduler's measured
time per task says fills ``TARGET_CHUNK_SECONDS``.

How a chunk's function and items reach the workers is the backend's
``transport`` (``Transport``): pickled with buffers through shared memory
(local processes), pickled into self-contained bytes (another machine), or
passed as they are (threads).
"""
from __future__ import annotations

import enum
import functools
import itertools
import math
from typing import Any, Callable, Iterable, Iterator

from . import messages as m
from .._transport import serialization as _serialization

CHUNKS_PER_WORKER = 32
MIN_CHUNK_SECONDS = 0.002
TARGET_CHUNK_SECONDS = 0.01
MAX_GROWN_CHUNKSIZE = 65536

_chunk_ids = itertools.count(1)


class Transport(enum.Enum):
    """How task functions and arguments reach a backend's workers."""

    #: Pickled; buffers above the zero-copy threshold travel through
    #: shared-memory segments (``_transport.serialization.dumps``).  Workers
    #: on this machine.
    SHARED_MEMORY = "shared memory"
    #: Pickled into self-contained bytes (``dumps_in_band``): a segment's
    #: name means nothing on another machine.
    IN_BAND = "in band"
    #: Not serialized: the objects themselves (workers in this process).
    NONE = "none"


def _dumps_items(items: list, transport: Transport) -> bytes | None:
    if transport is Transport.SHARED_MEMORY:
        return _serialization.dumps(items, "task arguments")
    if transport is Transport.IN_BAND:
        return _serialization.dumps_in_band(items, "task arguments")
    return None


def function_blob(fn: Callable, transport: Transport) -> Any:
    """*fn* as a chunk carries it: pickled (raises what pickle raised if it
    can't be), or *fn* itself when nothing is serialized."""
    if transport is Transport.NONE:
        return fn
    return _serialization.dumps_function(fn)


def function_name(fn: Callable) -> str:
    """A short name for *fn*, in messages and instrument events: its qualified name.

    Never its repr: a ``functools.partial``'s holds every bound argument
    (it would be made for each call), a callable object's may raise.  A
    partial is ``partial(<its function's name>)``, a callable object its
    class's name.
    """
    if isinstance(fn, functools.partial):
        return f"partial({function_name(fn.func)})"
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or \
        type(fn).__qualname__


class TaskChunk:
    """A run of consecutive tasks of one call, as the scheduler tracks it."""

    __slots__ = ("chunk_id", "func", "func_name", "call", "items", "payload",
                 "start", "sink", "timeout", "retries", "isolated", "tracking",
                 "count", "transport")

    # func and payload: the pickled function and items (bytes) for a backend
    # that serializes (processes), the function itself and None for one
    # that does not (threads); Any, since that is the backend's choice.
    def __init__(self, func: Any, func_name: str, call: int, items: list,
                 payload: Any, start: int, sink, timeout: float | None,
                 retries: int, transport: Transport = Transport.SHARED_MEMORY):
        self.chunk_id = next(_chunk_ids)
        self.func = func
        self.func_name = func_name
        self.call = call
        self.items = items
        self.count = len(items)
        self.payload = payload
        self.start = start
        self.sink = sink
        self.timeout = timeout
        self.retries = retries
        self.transport = transport
        # Sent alone in its Dispatch, so that a death while its result is
        # sent is pinned on it (set by the scheduler, see _pool/_backends/process/scheduler.py).
        self.isolated = False
        self.tracking = m.TRACK_INDEX  # set by the scheduler at dispatch

    def describe_task(self, index: int) -> str:
        """``func(args)`` of the task at *index* (relative), for error messages."""
        item = self.items[index]
        if self.call == m.CALL_MAP:
            args = _short_repr(item)
        elif self.call == m.CALL_STAR:
            args = ", ".join(_short_repr(a) for a in item)
        else:
            a, kw = item
            args = ", ".join([_short_repr(x) for x in a] +
                             [f"{k}={_short_repr(v)}" for k, v in kw.items()])
        return f"{self.func_name}({args}) [task {self.start + index}]"

    def subchunk(self, lo: int, hi: int, retries: int | None = None) -> TaskChunk:
        """A new chunk for items[lo:hi], serialized afresh from the objects."""
        items = self.items[lo:hi]
        return TaskChunk(self.func, self.func_name, self.call, items,
                         _dumps_items(items, self.transport), self.start + lo,
                         self.sink, self.timeout,
                         self.retries if retries is None else retries, self.transport)

    def release(self) -> None:
        if self.payload is not None:
            _serialization.release(self.payload)


def item_caller(fn: Callable, call: int) -> Callable[[Any], Any]:
    """The one-argument callable that runs *fn* on an item of a chunk.

    ``CALL_MAP`` is *fn* itself, so that a worker can run a chunk as
    ``map(fn, items)`` from C; the other two unpack the item.
    """
    if call == m.CALL_MAP:
        return fn
    if call == m.CALL_STAR:
        def call_star(item):
            return fn(*item)
        return call_star

    def call_apply(item):
        return fn(*item[0], **item[1])
    return call_apply


def _short_repr(obj: Any, limit: int = 60) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def auto_chunksize(length: int, workers: int,
                   task_seconds: float | None = None) -> int:
    """The chunk size for a call of *length* tasks when the caller gave none.

    About ``CHUNKS_PER_WORKER`` chunks per worker; but when the function's
    time per task is known (the scheduler measures it), no chunk shorter
    than ``MIN_CHUNK_SECONDS``: a map of trivial tasks then travels in a few
    large chunks, as the stdlib's does, instead of in many small messages.
    """
    size = math.ceil(length / (max(1, workers) * CHUNKS_PER_WORKER))
    if task_seconds is not None:
        size = max(size, math.ceil(MIN_CHUNK_SECONDS / max(task_seconds, 1e-8)))
        size = min(size, math.ceil(length / max(1, workers)))
    return max(1, size)


def make_chunk(fn_blob, fn_name: str, call: int, items: list, start: int,
               sink, timeout: float | None, retries: int,
               transport: Transport = Transport.SHARED_MEMORY) -> TaskChunk:
    """Serialize *items* into a chunk as *transport* says (threads: not at all).

    When they cannot be pickled, raises what ``serialization.dumps`` raises
    (catchable as the type pickle raised), naming the first item that
    cannot be pickled: its position in the call, its repr and why.
    """
    if transport is Transport.NONE:
        return TaskChunk(fn_blob, fn_name, call, items, None, start, sink,
                         timeout, retries, transport)
    try:
        payload = _dumps_items(items, transport)
    except Exception:
        for offset, item in enumerate(items):
            # Only to find the culprit (the error that names it is raised
            # from here): give back any segments it made.
            what = f"the argument of task {start + offset} of {fn_name}()"
            if transport is Transport.SHARED_MEMORY:
                _serialization.release(_serialization.dumps(item, what))
            else:
                _serialization.dumps_in_band(item, what)
        raise
    return TaskChunk(fn_blob, fn_name, call, items, payload, start, sink,
                     timeout, retries, transport)


def iter_slices(iterable: Iterable, chunksize: int | None,
                grow_limit: Callable[[], int]) -> Iterator[list]:
    """Cut *iterable* into lists; fixed size, or growing from 1 when None."""
    it = iter(iterable)
    if chunksize is not None:
        while True:
            piece = list(itertools.islice(it, chunksize))
            if not piece:
                return
            yield piece
    size = 1
    while True:
        piece = list(itertools.islice(it, size))
        if not piece:
            return
        yield piece
        size = min(size * 2, max(1, grow_limit()), MAX_GROWN_CHUNKSIZE)
