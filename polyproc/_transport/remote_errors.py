"""Carrying an exception from one process to another, and rebuilding it there.

Used by ``Process.exception`` (the child's ``run()`` raised) and by the Pool
(a task raised).  Three calls, none of which ever raises:

* ``transportable(exc)`` returns an exception that is safe to pickle: *exc*
  itself when it survives a plain-pickle round trip, otherwise a
  ``RemoteError`` that keeps its type name, message and traceback text.
  Either way the traceback text is attached as ``__cause__ =
  RemoteTraceback(tb)``, so that printing the exception shows where it
  happened in the other process.
* ``exception_payload(exc, limit=None)`` returns the bytes to send.  With
  a *limit* (``Process.exception`` passes ``DEFAULT_LIMIT``, 60 KB) they are
  at most that long, so that a child writing them into a pipe never blocks,
  even when nobody reads the pipe until the child has exited; a larger
  exception then travels as a ``RemoteError``.  Without one (Pool and
  Executor workers, whose pipes the scheduler always reads) the exception
  travels whole, whatever the length of its message.
* ``rebuild_exception(payload)`` turns those bytes back into an exception in
  the receiver, with ``__cause__`` set again.  If the receiver cannot
  unpickle the exception (its class exists only in the sender, an attribute
  that does not unpickle...), it returns a ``RemoteError`` with everything
  that was known.

An exception whose class takes other constructor arguments than its
``args`` (``class E(Exception): def __init__(self, a, b)``) pickles, but
plain pickle rebuilds it as ``E(*args)``, which raises.  Such an exception
is pickled *without* its ``__init__``: the receiver makes it with
``cls.__new__(cls, *args)``, sets ``args`` (and, for ``OSError`` and the
like, their fields) with the built-in base class's ``__init__``, then its
``__dict__`` (its attributes and ``__notes__``) as pickle would.  This is
how ``copy`` and pickle rebuild ordinary objects; the class's own
``__init__`` ran once already, in the sender.  Only an exception whose
class cannot be imported in the receiver, or whose attributes do not
pickle, is a ``RemoteError``.

Why a two-level payload?  Pickle drops ``__cause__``, ``__context__`` and
``__traceback__``, and an exception that pickles fine in the sender may
still fail to unpickle in the receiver.  So the payload is a small
``ExceptionMessage`` named tuple made only of strings and bytes (it always
unpickles), whose ``pickled`` field holds the exception pickled on its own.
The receiver unpickles the outer tuple, then tries the inner bytes, and
falls back to the strings.  This is the stdlib's idea
(``multiprocessing.pool.ExceptionWithTraceback`` / ``rebuild_exc``, and
``concurrent.futures.process._ExceptionWithTraceback``) made robust to
exceptions that do not survive the trip, which the stdlib pool hangs on
(gh-79492).

Plain ``pickle`` only, on purpose: exception classes are almost always
importable by name; an exception that needs cloudpickle is rare enough to
travel as a ``RemoteError``.
"""
from __future__ import annotations

import copyreg
import io
import pickle
import traceback
import types
from typing import Any, NamedTuple

from .._exceptions import RemoteError, RemoteTraceback

__all__ = ["ExceptionMessage", "transportable", "exception_payload",
           "rebuild_exception", "format_traceback", "pickle_exception",
           "DEFAULT_LIMIT"]

# A Linux pipe holds 64 KiB by default; staying below it lets the sender
# write the whole payload without a reader.
DEFAULT_LIMIT = 60_000

# What is kept of a message and of a traceback text when the payload must
# shrink.  The end of a traceback is the informative part (the frame that
# raised and the message), so the end is what is kept.
_MESSAGE_CHARS = 2_000
_PROTOCOL = pickle.HIGHEST_PROTOCOL


class ExceptionMessage(NamedTuple):
    """The bytes that cross the process boundary, before the outer pickle.

    Strings and bytes only, so that it always unpickles.
    """
    type_name: str         # "module.QualName" of the original exception
    message: str           # str() of the original exception
    traceback: str         # formatted traceback text, from the sender
    pickled: bytes | None  # the transportable exception, or None


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = getattr(cls, "__module__", None)
    if module in (None, "builtins"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<str() of {type(exc).__qualname__} failed>"


def format_traceback(exc: BaseException) -> str:
    """The traceback text of *exc* (with its chained causes); never raises."""
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        return f"{_type_name(exc)}: {_safe_str(exc)}\n"


def _remote_tb(tb: str) -> RemoteTraceback:
    # The same framing as the stdlib pool's RemoteTraceback: the text of the
    # other process's traceback between triple quotes.
    return RemoteTraceback(f'\n"""\n{tb}"""')


def _own_reductions() -> dict:
    """``copyreg.dispatch_table`` without what was registered for exceptions
    and tracebacks.

    ``import distributed`` (Dask) runs ``tblib.pickling_support.install()``,
    which registers a reducer for every exception class in the process, and
    a forked worker inherits it.  Its form loses what a class's own
    ``__init__`` sets (``SystemExit(5).code`` arrives as None) and makes
    exceptions that cannot be rebuilt look as if they could.  An exception
    polyproc sends travels as its class defines it, whatever the process
    imported.
    """
    return {cls: reducer for cls, reducer in copyreg.dispatch_table.items()
            if not (isinstance(cls, type)
                    and (issubclass(cls, BaseException) or cls is types.TracebackType))}


def _dumps(obj: Any, pickler_class: type[pickle.Pickler] = pickle.Pickler) -> bytes:
    file = io.BytesIO()
    pickler = pickler_class(file, _PROTOCOL)
    pickler.dispatch_table = _own_reductions()
    pickler.dump(obj)
    return file.getvalue()


def _round_trips(exc: BaseException) -> bytes | None:
    """Pickled *exc* if it pickles and unpickles to the same type, else None."""
    try:
        data = _dumps(exc)
        back = pickle.loads(data)
    except BaseException:  # user code: a __reduce__ may even raise SystemExit
        return None
    if type(back) is not type(exc):
        return None
    return data


def pickle_exception(exc: BaseException) -> bytes | None:
    """*exc* pickled so that a receiver rebuilds it; None if it can't be
    (``exception_payload`` then carries a ``RemoteError`` instead).

    Plain pickle when it round-trips (what the stdlib does, and what a
    class's own ``__reduce__`` asks for), else the form that skips
    ``__init__`` (see the module docstring), checked by a round trip too.
    """
    data = _round_trips(exc)
    if data is not None:
        return data
    try:
        data = _dumps(exc, _WithoutInitPickler)
        back = pickle.loads(data)
    except BaseException:  # user code again, as in _round_trips
        return None
    if type(back) is not type(exc):
        return None
    return data


class _WithoutInitPickler(pickle.Pickler):
    """Pickles every exception that would be rebuilt by calling its class
    (the default ``BaseException.__reduce__``) so that it is rebuilt
    without calling ``__init__``; nested ones (in ``args`` or attributes)
    too."""

    def reducer_override(self, obj):
        if not (isinstance(obj, BaseException) and _reduces_by_default(type(obj))):
            return NotImplemented  # the class has its own way: leave it alone
        reduced = obj.__reduce_ex__(_PROTOCOL)
        if not (isinstance(reduced, tuple) and 2 <= len(reduced) <= 3
                and reduced[0] is type(obj)):
            return NotImplemented
        state = reduced[2] if len(reduced) == 3 else None
        return _rebuild_without_init, (type(obj), tuple(reduced[1]), state)


def _reduces_by_default(cls: type) -> bool:
    """Whether *cls* pickles with a built-in exception's ``__reduce__``
    (``(cls, args, state)``), not one of its own."""
    owner = getattr(cls.__reduce__, "__objclass__", None)
    # (mypy types cls.__reduce_ex__ as a method bound to the class object,
    # so it cannot tell that the two may be the same function.)
    return (owner is not None and owner.__module__ == "builtins"
            and cls.__reduce_ex__ is object.__reduce_ex__)  # type: ignore[comparison-overlap]


def _rebuild_without_init(cls: type, args: tuple, state: dict | None) -> BaseException:
    """Make an exception of *cls* as if its ``__init__`` passed *args* on to
    the built-in base class's, then restore its attributes."""
    exc = cls.__new__(cls, *args)
    builtin = next(base for base in cls.__mro__ if base.__module__ == "builtins")
    builtin.__init__(exc, *args)  # type: ignore[misc]
    if state:
        exc.__setstate__(state)  # BaseException's: setattr for each item
    return exc


def _as_remote_error(exc: BaseException, tb: str) -> RemoteError:
    error = RemoteError(_type_name(exc), _safe_str(exc)[:_MESSAGE_CHARS], tb)
    error.__cause__ = _remote_tb(tb)
    return error


def transportable(exc: BaseException, tb: str | None = None) -> BaseException:
    """Return *exc*, or a ``RemoteError`` standing in for it, ready to pickle.

    *tb* is the traceback text (formatted from *exc* when omitted); it is
    attached as ``__cause__ = RemoteTraceback(tb)``.  Note that pickle does
    not carry ``__cause__``: send ``exception_payload(exc)`` to keep it.
    Never raises.
    """
    if tb is None:
        tb = format_traceback(exc)
    try:
        if _round_trips(exc) is None:
            return _as_remote_error(exc, tb)
        exc.__cause__ = _remote_tb(tb)
        return exc
    except Exception:  # e.g. a read-only __cause__ on an odd subclass
        return _as_remote_error(exc, tb)


def exception_payload(exc: BaseException, tb: str | None = None,
                      limit: int | None = None) -> bytes:
    """Bytes carrying *exc* and its traceback text; at most *limit* bytes.

    When the full form is larger than *limit*, the exception travels as a
    ``RemoteError`` with its message and traceback text cut (the end of the
    traceback is kept).  ``limit=None``: no limit.  Never raises.
    """
    if tb is None:
        tb = format_traceback(exc)
    type_name, message = _type_name(exc), _safe_str(exc)
    pickled = pickle_exception(exc)
    payload = _dump(ExceptionMessage(type_name, message, tb, pickled))
    if limit is None or len(payload) <= limit:
        return payload
    # Too big: drop the pickled exception, then cut the texts to fit.
    message = message[:_MESSAGE_CHARS]
    room = max(limit - len(type_name) - len(message) - 200, 0)
    # Characters can take up to 4 bytes in UTF-8 pickles; cut by bytes.
    tb_bytes = tb.encode("utf-8", "replace")
    if len(tb_bytes) > room:
        tb = ("[... traceback cut to fit the message ...]\n"
              + tb_bytes[len(tb_bytes) - room + 64:].decode("utf-8", "ignore"))
    payload = _dump(ExceptionMessage(type_name, message, tb, None))
    if len(payload) <= limit:
        return payload
    return _dump(ExceptionMessage(type_name[:200], "", "", None))[:limit]


def _dump(message: ExceptionMessage) -> bytes:
    return pickle.dumps(tuple(message), _PROTOCOL)


def rebuild_exception(payload: bytes | memoryview) -> BaseException:
    """The exception carried by a payload of ``exception_payload``.

    The original exception when it can be unpickled here, else a
    ``RemoteError``; ``__cause__`` is the sender's ``RemoteTraceback``.
    Never raises: a damaged payload gives a ``RemoteError`` that says so.
    """
    try:
        fields = pickle.loads(payload)
        message = ExceptionMessage(*fields)
    except Exception as error:
        return RemoteError("<unknown>",
                           f"the exception could not be read ({error!r})", "")
    if message.pickled is not None:
        try:
            exc = pickle.loads(message.pickled)
            if isinstance(exc, BaseException):
                exc.__cause__ = _remote_tb(message.traceback)
                return exc
        except BaseException:
            # Unpickling runs the exception class's own code, which may
            # raise anything, SystemExit included: in a pool's scheduler
            # thread that would end the thread, so it is caught too.
            pass
    remote = RemoteError(message.type_name, message.message, message.traceback)
    remote.__cause__ = _remote_tb(message.traceback)
    return remote
