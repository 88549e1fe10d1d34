"""Turning objects into bytes that cross a process boundary, and back.

One place for every carrier (Pool tasks and results, queues, pipes,
managers) so that they all behave the same way:

* Plain ``pickle`` (protocol 5) first: it is the fastest and what the
  stdlib uses, so ordinary objects behave exactly as they do there.
* ``cloudpickle`` only when plain pickle fails (lambdas, closures,
  functions defined in ``__main__`` or an interactive session): the common
  path pays nothing for it.
* A failure names the object and the reason and raises
  ``SerializationError`` in the caller, at the call, never in a background
  thread where it would be lost.

Contract for carriers: ``dumps(obj)`` returns a bytes-like payload;
``loads(payload)`` rebuilds the object exactly once; ``release(payload)``
frees whatever a payload holds outside itself (shared-memory segments of
the zero-copy path) when it will never be loaded, e.g. because its receiver
died.  ``release`` of a payload that was already loaded is harmless.
"""
from __future__ import annotations

import pickle
import sys
from typing import Any, Callable

from ._exceptions import SerializationError

__all__ = ["dumps", "loads", "release", "dumps_function", "describe"]

PROTOCOL = 5


def describe(obj: Any, limit: int = 80) -> str:
    """A short, safe description of *obj* for error messages."""
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__qualname__} object>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} (type {type(obj).__module__}.{type(obj).__qualname__})"


def _cloudpickle_dumps(obj: Any) -> bytes:
    import cloudpickle  # imported lazily: most programs never need it
    return cloudpickle.dumps(obj, protocol=PROTOCOL)


def dumps(obj: Any, what: str = "object") -> bytes:
    """Pickle *obj*; raise ``SerializationError`` naming it when it can't be.

    *what* says what the object is for the message ("argument of task 3",
    "result", ...).
    """
    try:
        return pickle.dumps(obj, PROTOCOL)
    except Exception as plain_error:
        try:
            return _cloudpickle_dumps(obj)
        except Exception as cloud_error:
            raise SerializationError(
                f"cannot pickle {what} {describe(obj)}: {cloud_error!r}. "
                "Objects sent to another process must be picklable; pass the "
                "data the object is made from instead, or create it inside "
                "the task."
            ) from plain_error


def loads(payload: bytes | memoryview, what: str = "object") -> Any:
    """Rebuild an object made by ``dumps``; raise ``SerializationError`` on failure."""
    try:
        return pickle.loads(payload)
    except Exception as error:
        raise SerializationError(
            f"cannot unpickle {what}: {error!r}. The class or function it "
            "refers to must be importable in the receiving process."
        ) from error


def release(payload: bytes | memoryview) -> None:
    """Free what *payload* holds outside itself (nothing for in-band pickles)."""
    return None


# Functions that plain pickle can handle are pickled *by reference* (module
# and name), so their bytes never change: cache them per function object, or
# a 10,000-call ``apply_async`` loop pays for pickling 10,000 times.  Those
# that need cloudpickle (lambdas, closures, ``__main__`` functions) are
# pickled *by value*, capturing closure cells and globals as they are now;
# caching those would send stale values, so they are pickled every time.
_function_cache: dict[Any, bytes] = {}


def dumps_function(fn: Callable) -> bytes:
    """Pickle a callable; by-reference pickles are cached per callable."""
    try:
        cached = _function_cache.get(fn)
    except TypeError:  # unhashable callable: no caching
        return dumps(fn, "function")
    if cached is not None:
        return cached
    if _defined_in_interactive_main(fn):
        # By reference it would pickle fine here and fail in a spawned
        # worker, which cannot import a ``__main__`` that has no file.
        return _cloudpickle_dumps(fn)
    try:
        data = pickle.dumps(fn, PROTOCOL)
    except Exception:
        return dumps(fn, "function")
    if len(_function_cache) > 1024:
        _function_cache.clear()
    _function_cache[fn] = data
    return data


def _defined_in_interactive_main(fn: Callable) -> bool:
    if getattr(fn, "__module__", None) != "__main__":
        return False
    main = sys.modules.get("__main__")
    return getattr(main, "__file__", None) is None
