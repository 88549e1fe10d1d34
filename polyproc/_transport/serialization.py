"""Turning objects into bytes that cross a process boundary, and back.

One place for every carrier (Pool tasks and results, queues, pipes,
managers) so that they all behave the same way:

* Plain ``pickle`` (protocol 5) first: it is the fastest and what the
  stdlib uses, so ordinary objects behave exactly as they do there.
* Then the stdlib's ``ForkingPickler`` reducers (sockets, connections) and a
  reducer for ``memoryview``, then ``cloudpickle`` (lambdas, closures,
  functions defined in ``__main__`` or an interactive session), each only
  when the one before failed: the common path pays nothing for them.
* A failure names the object and the reason and raises in the caller, at
  the call, never in a background thread where it would be lost.  What it
  raises is catchable as what pickle raised, as the stdlib's error is
  (``_exceptions.pickling_error``): a ``SerializationError`` that is also
  a ``TypeError``/``PicklingError``/``AttributeError``, or the object's
  own exception with polyproc's message as a note.

Zero-copy transport of large buffers
------------------------------------
Pickle protocol 5 hands every buffer it meets (a NumPy array's data, a
``PickleBuffer`` of a user type) to a ``buffer_callback``.  Buffers smaller
than ``ZERO_COPY_THRESHOLD`` stay in the pickle (in-band), exactly as with
``pickle.dumps(obj, 5)``.  Larger ones are copied once into a shared-memory
segment each and only their names travel::

    sender                                           receiver
    ------                                           --------
    pickle.dumps(obj, 5, buffer_callback)
      small buffers --> in the pickle stream --+
      large buffers --> shm_cache.acquire      |
                        (refill a FREE segment,|
                         or a new one: 1 copy) |
    payload = MAGIC + ZeroCopyPayload(stream, (SegmentRef, ...))
                              |      pipe / queue / socket
                              +--------------------------------> loads()
                                                  shm_cache.attach: map
                                                  privately (0 copies)
                                                  pickle.loads(stream,
                                                      buffers=views)
                                                  ... the array dies:
                    segment FREE again  <-------- finalizer marks it FREE

NumPy arrays come back *backed by the mapping*: no copy on the receiving
side.  The receiver gets a private copy all the same, because the sender
copied and refills a segment only after the receiver's objects are gone:
later changes by the sender never show through.  Segments are *recycled*
(``shm_cache.py``) because a fresh segment costs more than the copy: the
kernel allocates and zeroes each page, and frees it again.  Where the
sender's pool is full, a *one-shot* segment (``_transport/shm.py``) is used, which
the receiver unlinks as it opens it.  The session's tracker
(``_transport/tracker.py``) removes whatever a crash leaves behind.

The cost for small objects is one extra C-level check: ``dumps`` passes a
module-level ``buffer_callback`` that keeps small buffers in-band and raises
``_LargeBuffer`` on the first large one; only then does the zero-copy path
pickle again with a callback that collects buffers.  Payloads without large
buffers are plain protocol-5 pickles, byte for byte what ``pickle.dumps``
makes; ``loads`` tells them from a zero-copy payload by the first byte
(``0xff``, which is not a pickle opcode), so any plain pickle still loads.

Three more cases go through shared memory:

* A top-level ``bytes``/``bytearray`` of at least the threshold (a queue
  item, a pipe message): sent as one out-of-band buffer.  The receiver
  copies it out of the mapping once, since a ``bytes`` must own its memory.
* A ``memoryview`` (which plain pickle refuses): rebuilt as a ``memoryview``
  of the same format and shape over the received memory.
* A pickle stream that is itself at least the threshold (large ``bytes``
  nested in a container, a long list): the whole stream goes in a segment,
  which still beats the pipe by far.

When shared memory cannot be had (``/dev/shm`` full or too small, no
tracker) the payload falls back to an ordinary in-band pickle through the
pipe, with one ``RuntimeWarning`` per process; only if that fails too for
lack of memory does ``dumps`` raise ``SerializationError`` naming the size.

Contract for carriers: ``dumps(obj)`` returns a bytes-like payload;
``loads(payload)`` rebuilds the object exactly once (the segments are gone
after it); ``release(payload)`` frees whatever a payload holds outside
itself (its shared-memory segments) when it will never be loaded, e.g.
because its receiver died.  ``release`` of a payload that was already
loaded is harmless.
"""
from __future__ import annotations

import copyreg
import pickle
import sys
import types
import warnings
import weakref
from typing import Any, Callable, NamedTuple

from . import shm as _shm
from . import shm_cache
from .._exceptions import LargeBufferSignal as _LargeBuffer
from .._exceptions import SerializationError, pickling_error

__all__ = ["dumps", "dumps_in_band", "loads", "release", "shared_bytes", "dumps_function",
           "is_by_reference", "describe", "ZERO_COPY_THRESHOLD", "ZeroCopyPayload"]

PROTOCOL = 5

# Buffers (and whole pickle streams) of this many bytes or more travel
# through shared memory.  Measured with benchmarks/bench_zero_copy.py
# (scenarios zero_copy_threshold_*, arrays through a Pipe): shared memory
# loses at 64 KiB (0.24x the in-band path) and 256 KiB (0.7x), and wins
# from 1 MiB on (1.9x; 3.6x at 4 MiB): a segment's fixed cost (tracker
# message, shm_open, mmap, page faults: ~100 us) stops mattering there.
ZERO_COPY_THRESHOLD = 1 << 20

# First bytes of a zero-copy payload.  0xff is no pickle opcode, so a plain
# pickle (which starts with PROTO, 0x80, or an ASCII opcode) never starts so.
MAGIC = b"\xffPPZ"
_MAGIC_FIRST = MAGIC[0]


class ZeroCopyPayload(NamedTuple):
    """The header of a zero-copy payload (pickled after ``MAGIC``).

    ``stream`` is the pickle stream itself, or the segment holding it when
    it is large; ``buffers`` are the out-of-band buffers, in the order
    ``pickle.loads(..., buffers=)`` wants them.
    """
    stream: bytes | _shm.SegmentRef
    buffers: tuple[_shm.SegmentRef, ...]


def describe(obj: Any, limit: int = 80) -> str:
    """A short, safe description of *obj* for error messages."""
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__qualname__} object>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} (type {type(obj).__module__}.{type(obj).__qualname__})"


# -- Picklers, tried in order -------------------------------------------------
# Each takes (obj, buffer_callback) and returns the pickle stream.

def _plain_dumps(obj: Any, buffer_callback: Callable | None) -> bytes:
    return pickle.dumps(obj, PROTOCOL, buffer_callback=buffer_callback)


def _rebuild_memoryview(data, fmt: str, shape: tuple, readonly: bool) -> memoryview:
    view = memoryview(data)
    if readonly:
        view = view.toreadonly()
    try:
        # fmt is the sender's memoryview format; typeshed's cast() accepts
        # only literal formats.
        return view.cast("B").cast(fmt, shape)  # type: ignore[call-overload]
    except (TypeError, ValueError):  # a format cast() does not know
        return view


class _ExtendedPickler(pickle.Pickler):
    """The stdlib's ``ForkingPickler`` reducers, plus one for ``memoryview``."""

    def __init__(self, file, buffer_callback):
        super().__init__(file, PROTOCOL, buffer_callback=buffer_callback)
        from multiprocessing.reduction import ForkingPickler
        self.dispatch_table = copyreg.dispatch_table.copy()
        # The reducers ForkingPickler.register() added (private; not in typeshed).
        self.dispatch_table.update(ForkingPickler._extra_reducers)  # type: ignore[attr-defined]

    def reducer_override(self, obj):
        if type(obj) is not memoryview:
            return NotImplemented
        data = obj if obj.c_contiguous else obj.tobytes()
        return (_rebuild_memoryview,
                (pickle.PickleBuffer(data), obj.format, obj.shape, obj.readonly))


def _extended_dumps(obj: Any, buffer_callback: Callable | None) -> bytes:
    import io
    file = io.BytesIO()
    _ExtendedPickler(file, buffer_callback).dump(obj)
    return file.getvalue()


def _cloudpickle_dumps(obj: Any, buffer_callback: Callable | None = None) -> bytes:
    import cloudpickle  # imported lazily: most programs never need it
    return cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=buffer_callback)


_PICKLERS = (_plain_dumps, _extended_dumps, _cloudpickle_dumps)


# -- dumps ----------------------------------------------------------------------

def _keep_small_in_band(buffer: pickle.PickleBuffer) -> bool:
    # Returning True keeps the buffer in the stream, as plain pickle does.
    if memoryview(buffer).nbytes < ZERO_COPY_THRESHOLD:
        return True
    raise _LargeBuffer


class _RawBytes:
    """Wraps a large top-level bytes/bytearray so that it goes out-of-band."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray):
        self.data = data

    def __reduce_ex__(self, protocol):
        return type(self.data), (pickle.PickleBuffer(self.data),)


def dumps(obj: Any, what: str = "object") -> bytes:
    """Pickle *obj*; raise ``pickling_error(...)`` naming it when it can't be.

    *what* says what the object is for the message ("argument of task 3",
    "result", ...).  Large buffers in *obj* are copied into shared memory;
    the payload must then be passed to ``loads`` or ``release`` exactly
    once, or its memory stays allocated until the session ends.
    """
    try:
        stream = pickle.dumps(obj, PROTOCOL, buffer_callback=_keep_small_in_band)
    except _LargeBuffer:
        return _dumps_zero_copy(obj, what)
    except Exception as plain_error:
        return _dumps_zero_copy(obj, what, first_error=plain_error)
    if len(stream) < ZERO_COPY_THRESHOLD:
        return stream
    # Large, with no large buffer: big bytes, a long list...  A top-level
    # bytes/bytearray is checked for only here, to keep the small path free
    # of it; it costs one wasted copy (the stream above), not a pipe trip.
    cls = type(obj)
    if cls is bytes or cls is bytearray:
        del stream
        return _dumps_zero_copy(obj, what, _RawBytes(obj))
    return _to_shared_memory(stream, [], obj, what, _plain_dumps)


def dumps_in_band(obj: Any, what: str = "object") -> bytes:
    """Like ``dumps`` but never through shared memory: self-contained bytes.

    For links to another machine (a remote manager, a remote pool
    backend), where a shared-memory segment's name means nothing.  Plain
    pickle first, cloudpickle when that fails; ``SerializationError`` when
    neither can.
    """
    try:
        return pickle.dumps(obj, PROTOCOL)
    except Exception as plain_error:
        try:
            import cloudpickle
            return cloudpickle.dumps(obj, protocol=PROTOCOL)
        except Exception as error:
            raise SerializationError(
                f"cannot pickle {what} {describe(obj)}: {error!r}. Objects "
                "sent to another machine must be picklable.") from plain_error


def _dumps_zero_copy(obj: Any, what: str, to_pickle: Any = None,
                     first_error: BaseException | None = None) -> bytes:
    """The slow path: collect large buffers, trying each pickler in turn."""
    to_pickle = obj if to_pickle is None else to_pickle
    picklers = _PICKLERS if first_error is None else _PICKLERS[1:]
    last_error = first_error
    for dumps_with in picklers:
        large: list[pickle.PickleBuffer] = []

        def collect(buffer: pickle.PickleBuffer) -> bool:
            view = memoryview(buffer)
            if view.nbytes < ZERO_COPY_THRESHOLD or not view.contiguous:
                return True  # in-band (a non-contiguous one fails there, as in the stdlib)
            # (only this iteration's dumps_with calls it: this `large`)
            large.append(buffer)  # noqa: B023
            return False

        try:
            stream = dumps_with(to_pickle, collect)
        except Exception as error:
            first_error = first_error or error
            last_error = error
            continue
        return _to_shared_memory(stream, large, obj, what, dumps_with)
    raise _cannot_pickle(obj, what, first_error, last_error)


def _cannot_pickle(obj: Any, what: str, first_error: BaseException | None,
                   last_error: BaseException | None) -> BaseException:
    """The error for *obj* that no pickler could pickle.

    Catchable as the type plain pickle raised (*first_error*), as the
    stdlib's error is (``_exceptions.pickling_error``).
    """
    assert first_error is not None  # every pickler failed
    return pickling_error(
        f"cannot pickle {what} {describe(obj)}: {last_error!r}. "
        "Objects sent to another process must be picklable; pass the "
        "data the object is made from instead, or create it inside "
        "the task.", first_error)


def _to_shared_memory(stream: bytes, large: list[pickle.PickleBuffer],
                      obj: Any, what: str, dumps_with: Callable) -> bytes:
    """Copy the large buffers (and a large stream) into segments; make the payload.

    Falls back to an in-band pickle when shared memory is unavailable.
    """
    if not large and len(stream) < ZERO_COPY_THRESHOLD:
        return stream  # nothing large after all: a plain pickle
    created: list[_shm.SegmentRef] = []
    try:
        for buffer in large:
            created.append(_new_segment(buffer.raw()))
        if len(stream) >= ZERO_COPY_THRESHOLD:
            stream_segment = _new_segment(memoryview(stream))
            created.append(stream_segment)
            body: bytes | _shm.SegmentRef = stream_segment
        else:
            body = stream
        # PENDING -> IN_FLIGHT: the payload is complete, and from here on
        # the tracker leaves its segments to the receiver if we die.
        shm_cache.hand_off(created)
    except OSError as error:
        for ref in created:
            _release_segment(ref)
        return _in_band_fallback(obj, what, dumps_with, stream, large, error)
    except BaseException:  # Ctrl-C in the middle of a copy: nothing leaks
        for ref in created:
            _release_segment(ref)
        raise
    buffers = tuple(created[:len(large)])
    header = pickle.dumps(ZeroCopyPayload(body, buffers), PROTOCOL)
    return MAGIC + header


def _new_segment(data: memoryview) -> _shm.SegmentRef:
    # A recycled segment when the pool has room (see shm_cache.py), else
    # a one-shot one.
    return shm_cache.acquire(data) or _shm.create(data)


def _attach_segment(ref: _shm.SegmentRef) -> memoryview:
    return shm_cache.attach(ref) if ref.recycled else _shm.attach(ref)


def _release_segment(ref: _shm.SegmentRef) -> None:
    if ref.recycled:
        shm_cache.release(ref)
    else:
        _shm.unlink(ref.name)


_warned_fallback = False


def _in_band_fallback(obj: Any, what: str, dumps_with: Callable, stream: bytes,
                      large: list[pickle.PickleBuffer], error: OSError) -> bytes:
    global _warned_fallback
    needed = len(stream) + sum(memoryview(b).nbytes for b in large)
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"polyproc: shared memory unavailable ({error}); sending {what} "
            f"({needed} bytes) through the pipe instead. Make /dev/shm larger "
            "for faster transfers of large arrays.", RuntimeWarning,
            stacklevel=4)
    if not large:
        return stream  # already in-band: the large stream goes as it is
    try:
        return dumps_with(obj, None)
    except MemoryError as memory_error:
        raise SerializationError(
            f"cannot send {what} {describe(obj)}: it needs {needed} bytes, "
            f"which fit neither in shared memory ({error}) nor in memory "
            "for the pipe."
        ) from memory_error


# -- loads / release ------------------------------------------------------------------

def loads(payload: bytes | bytearray | memoryview, what: str = "object") -> Any:
    """Rebuild an object made by ``dumps`` (or by ``pickle.dumps``).

    Raises ``SerializationError`` on failure, including a zero-copy payload
    whose segments are gone (it was loaded or released before).
    """
    try:
        if payload[0] != _MAGIC_FIRST:
            return pickle.loads(payload)
    except Exception as error:
        raise SerializationError(
            f"cannot unpickle {what}: {error!r}. The class or function it "
            "refers to must be importable in the receiving process."
        ) from error
    return _loads_zero_copy(payload, what)


def _read_header(payload: bytes | bytearray | memoryview) -> ZeroCopyPayload:
    view = memoryview(payload)
    if view[:len(MAGIC)] != MAGIC:
        raise ValueError("not a polyproc payload (bad magic)")
    header = pickle.loads(view[len(MAGIC):])
    if not isinstance(header, ZeroCopyPayload):
        raise ValueError("not a polyproc payload (bad header)")
    return header


def _attach_all(header: ZeroCopyPayload,
                what: str) -> tuple[list[memoryview], bytes | memoryview]:
    """Map every segment of *header*; all are unlinked even if one fails.

    Returns the buffers' mappings and the pickle stream: the header's
    bytes, or the mapping of its segment.
    """
    refs = list(header.buffers)
    if isinstance(header.stream, _shm.SegmentRef):
        refs.append(header.stream)
    mappings, failure = [], None
    for ref in refs:
        try:
            mappings.append(_attach_segment(ref))
        except (OSError, ValueError) as error:
            _release_segment(ref)
            failure = failure or (ref, error)
    if failure is not None:
        failed_ref, cause = failure
        if isinstance(cause, _shm.SegmentGoneError):
            reason = (f"its shared-memory segment {failed_ref.name} ({failed_ref.size} bytes) "
                      "no longer exists: the payload was loaded or released "
                      "before (a payload loads exactly once), or the sending "
                      "session ended and its tracker removed it")
        else:
            reason = f"its shared-memory segment {failed_ref.name} cannot be mapped: {cause}"
        raise SerializationError(f"cannot unpickle {what}: {reason}.") from cause
    if isinstance(header.stream, _shm.SegmentRef):
        return mappings[:-1], mappings[-1]
    return mappings, header.stream


def _loads_zero_copy(payload, what: str) -> Any:
    try:
        header = _read_header(payload)
    except Exception as error:
        raise SerializationError(f"cannot unpickle {what}: {error!r}") from error
    buffers, stream = _attach_all(header, what)
    try:
        return pickle.loads(stream, buffers=buffers)
    except Exception as error:
        raise SerializationError(
            f"cannot unpickle {what}: {error!r}. The class or function it "
            "refers to must be importable in the receiving process."
        ) from error
    finally:
        if isinstance(stream, memoryview):  # a segment's mapping
            stream.release()  # its data was copied into objects


def release(payload: bytes | bytearray | memoryview) -> None:
    """Free what *payload* holds outside itself: unlink its segments.

    For a payload that will never be loaded.  Harmless for a plain pickle
    and for a payload already loaded or released; never raises.
    """
    try:
        if payload[0] != _MAGIC_FIRST:
            return
        header = _read_header(payload)
    except Exception:
        return
    for ref in header.buffers:
        _release_segment(ref)
    if isinstance(header.stream, _shm.SegmentRef):
        _release_segment(header.stream)


def shared_bytes(payload: bytes | bytearray | memoryview) -> int:
    """Bytes *payload* carries through shared memory (0 for a plain pickle).

    One byte is read for a plain pickle; the header of a zero-copy payload
    (a few hundred bytes, a megabyte or more of segments behind it) is
    unpickled.  Never raises: a payload that is not a zero-copy one, or
    whose header is damaged, counts 0.
    """
    try:
        if not payload or payload[0] != _MAGIC_FIRST:
            return 0
        header = _read_header(payload)
    except Exception:
        return 0
    total = sum(ref.size for ref in header.buffers)
    if isinstance(header.stream, _shm.SegmentRef):
        total += header.stream.size
    return total


# -- Functions ----------------------------------------------------------------------

# A pool sends the pickled function with every chunk of a call, so pickling
# it again for each of 10,000 ``apply_async`` calls would be a large part of
# their cost: the bytes are cached, but only where they cannot go stale.
#
# What may be cached.  Only callables that plain pickle saves *by reference*
# (their module and qualified name, nothing of their state): plain functions
# (``types.FunctionType``) and classes that are reachable under their own
# name.  Everything else is pickled *by value* and pickled again at every
# call, because its bytes capture state that can change between two calls:
# a bound method pickles its instance, a ``functools.partial`` its arguments,
# a callable object its attributes, a closure or lambda (cloudpickle) its
# cells and globals, and a builtin bound to an object (``[].append``) that
# object.  Builtins are not cached at all: telling a module's builtin from a
# bound one costs about what pickling one does.
#
# How it is keyed.  By ``id(fn)``, holding only a *weak* reference to fn:
# the cache must not keep a submitted callable alive (a function made at
# run time and set as a module attribute can be collected), and an entry
# leaves with its function (the weakref's callback).  A hit is trusted only
# if the weakref still points at fn itself (an id can be reused once an
# object is gone) and the name in the bytes still names fn in its module:
# if that attribute was rebound (a function defined twice), the bytes would
# run the other function in the worker, where a fresh pickle would carry fn.
class _ByReference(NamedTuple):
    ref: weakref.ReferenceType
    module: str             # the name in the pickled bytes: module...
    path: tuple[str, ...]   # ... and qualified name, split at the dots
    data: bytes


_by_reference: dict[int, _ByReference] = {}
_BY_REFERENCE_LIMIT = 1024


def dumps_function(fn: Callable) -> bytes:
    """Pickle a callable for workers: bytes that load any number of times.

    Never zero-copy (a worker loads the same bytes once per chunk, and
    several workers load them), so a closure over a large array travels
    in-band.  Callables pickled by reference are cached (see above).
    Raises ``SerializationError`` if *fn* cannot be pickled.
    """
    entry = _by_reference.get(id(fn))
    if entry is not None:
        ref, module, path, data = entry
        if ref() is fn:
            named = sys.modules.get(module)
            for name in path:  # _lookup inlined: this is the hot path
                named = getattr(named, name, None)
            if named is fn:
                return data
    if _defined_in_interactive_main(fn):
        # By reference it would pickle fine here and fail in a spawned
        # worker, which cannot import a ``__main__`` that has no file.
        return _dumps_in_band(fn, "function", (_cloudpickle_dumps,))
    if is_by_reference(fn):
        try:
            data = pickle.dumps(fn, PROTOCOL)
        except Exception:
            pass  # e.g. a class whose metaclass refuses: the slow path says why
        else:
            _remember(fn, data)
            return data
    return _dumps_in_band(fn, "function", _PICKLERS)


def is_by_reference(fn: Any) -> bool:
    """Whether plain pickle saves *fn* by name alone (so its bytes never change).

    True for a plain function or a class that its module exposes under its
    qualified name.  Also true in a worker for a function unpickled from such
    bytes, and false for one rebuilt by value (it is a copy, not the
    module's object).
    """
    if type(fn) is not types.FunctionType and not isinstance(fn, type):
        return False
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return False
    return _lookup(module, tuple(qualname.split("."))) is fn


def _lookup(module: str, path: tuple[str, ...]) -> Any:
    obj = sys.modules.get(module)
    for name in path:
        obj = getattr(obj, name, None)
    return obj


def _remember(fn: Callable, data: bytes) -> None:
    key = id(fn)

    def forget(ref: weakref.ReferenceType) -> None:
        entry = _by_reference.get(key)
        if entry is not None and entry.ref is ref:
            del _by_reference[key]

    if len(_by_reference) >= _BY_REFERENCE_LIMIT:
        _by_reference.clear()
    _by_reference[key] = _ByReference(weakref.ref(fn, forget), fn.__module__,
                                      tuple(fn.__qualname__.split(".")), data)


def _dumps_in_band(obj: Any, what: str, picklers: tuple) -> bytes:
    """Pickle *obj* into self-contained bytes, trying *picklers* in turn."""
    first_error: BaseException | None = None
    last_error: BaseException | None = None
    for dumps_with in picklers:
        try:
            return dumps_with(obj, None)
        except Exception as error:
            first_error = first_error or error
            last_error = error
    raise _cannot_pickle(obj, what, first_error, last_error)


def _defined_in_interactive_main(fn: Callable) -> bool:
    if getattr(fn, "__module__", None) != "__main__":
        return False
    main = sys.modules.get("__main__")
    return getattr(main, "__file__", None) is None
