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
import pickle
from typing import Any, Callable, Iterable, Iterator

from . import messages as m
from .._transport import serialization as _serialization

CHUNKS_PER_WORKER = 32
MIN_CHUNK_SECONDS = 0.002
TARGET_CHUNK_SECONDS = 0.01
MAX_GROWN_CHUNKSIZE = 65536
# A Dask task costs 2 to 40 ms of scheduling and round trips (PEERS.md,
# docs/cluster.md): chunks on a cluster are fewer and longer.
CLUSTER_CHUNKS_PER_WORKER = 4
CLUSTER_MIN_CHUNK_SECONDS = 0.05

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
    #: As ``IN_BAND``, over a link that is loopback or encrypted (TLS):
    #: manager proxies among the arguments carry their authentication key,
    #: as they do when pickled for a child being spawned (docs/cluster.md).
    IN_BAND_TRUSTED = "in band, trusted link"
    #: Not serialized: the objects themselves (workers in this process).
    NONE = "none"


class _CarryingAuthkeys:
    """The pickling context of ``Transport.IN_BAND_TRUSTED``.

    Manager proxies pickle their authkey only while a child is being
    spawned (``multiprocessing.context.get_spawning_popen()`` is set, per
    thread); this sets it for the duration, so they do the same for a
    link that keeps the key secret.
    """

    def __enter__(self) -> None:
        from multiprocessing import context
        context.set_spawning_popen(self)  # type: ignore[arg-type]

    def __exit__(self, *exc_info: Any) -> None:
        from multiprocessing import context
        context.set_spawning_popen(None)


def _dumps_items(items: list, transport: Transport) -> bytes | None:
    if transport is Transport.SHARED_MEMORY:
        return _serialization.dumps(items, "task arguments")
    if transport is Transport.IN_BAND:
        return _dumps_leaving_out_large_buffers(items)
    if transport is Transport.IN_BAND_TRUSTED:
        with _CarryingAuthkeys():
            return _dumps_leaving_out_large_buffers(items)
    return None


class OutOfBandPayload(bytes):
    """An in-band pickle (these bytes) whose large buffers were left out.

    ``buffers``: the buffers of ``ZERO_COPY_THRESHOLD`` bytes or more
    (NumPy arrays' data, large ``PickleBuffer``s), as views of the objects'
    memory (no copy), in the order ``pickle.loads(self, buffers=...)``
    wants them.  A cluster backend sends each distinct one to the workers
    once (``client.scatter``) instead of inside every task; they are read
    when they are sent, as the stdlib Pool's task handler thread reads a
    task's arguments when it sends them, not when the call was made.
    """

    buffers: tuple[memoryview, ...] = ()


def _dumps_leaving_out_large_buffers(items: list) -> bytes:
    """``dumps_in_band``, with large buffers left out (``OutOfBandPayload``)."""
    large: list[memoryview] = []

    def leave_out(buffer: pickle.PickleBuffer) -> bool:
        view = buffer.raw() if memoryview(buffer).contiguous else None
        if view is None or view.nbytes < _serialization.ZERO_COPY_THRESHOLD:
            return True   # in band
        large.append(view)
        return False

    try:
        stream = pickle.dumps(items, _serialization.PROTOCOL, buffer_callback=leave_out)
    except Exception:
        large.clear()
        try:
            import cloudpickle
            stream = cloudpickle.dumps(items, protocol=_serialization.PROTOCOL,
                                       buffer_callback=leave_out)
        except Exception:
            # What neither can pickle: the error that names it.
            return _serialization.dumps_in_band(items, "task arguments")
    if not large:
        return stream
    payload = OutOfBandPayload(stream)
    payload.buffers = tuple(large)
    return payload


def function_blob(fn: Callable, transport: Transport) -> Any:
    """*fn* as a chunk carries it: pickled (raises what pickle raised if it
    can't be), or *fn* itself when nothing is serialized."""
    if transport is Transport.NONE:
        return fn
    if transport in _IN_BAND and getattr(fn, "__module__", None) == "__main__":
        # By value: another machine's ``__main__`` is not this program (a
        # Dask worker's is Dask's), so a reference to it would not load.
        import cloudpickle
        return cloudpickle.dumps(fn, protocol=_serialization.PROTOCOL)
    return _serialization.dumps_function(fn)


_IN_BAND = (Transport.IN_BAND, Transport.IN_BAND_TRUSTED)


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
                   task_seconds: float | None = None, *,
                   chunks_per_worker: int = CHUNKS_PER_WORKER,
                   min_chunk_seconds: float = MIN_CHUNK_SECONDS) -> int:
    """The chunk size for a call of *length* tasks when the caller gave none.

    About ``CHUNKS_PER_WORKER`` chunks per worker; but when the function's
    time per task is known (the scheduler measures it), no chunk shorter
    than ``MIN_CHUNK_SECONDS``: a map of trivial tasks then travels in a few
    large chunks, as the stdlib's does, instead of in many small messages.
    A cluster, where a chunk costs milliseconds, passes fewer and longer
    chunks (``CLUSTER_CHUNKS_PER_WORKER``, ``CLUSTER_MIN_CHUNK_SECONDS``).
    """
    size = math.ceil(length / (max(1, workers) * chunks_per_worker))
    if task_seconds is not None:
        size = max(size, math.ceil(min_chunk_seconds / max(task_seconds, 1e-8)))
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
