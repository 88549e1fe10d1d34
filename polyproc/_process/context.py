"""The contexts the engines start processes with, and which one is the default.

An engine (a pool, an executor, a manager) starts its processes through a
context: ``context.Process`` (polyproc's, so that workers get the daemon
watchdog), ``context.get_start_method()``, ``context.RawArray``.  The
public contexts (``polyproc.context``) are the ones below plus the
factories of every engine (``Pool``, ``Queue``, ``Manager``, ...); they sit
above the engines, which never import them: the public layer passes its
context in, and an engine created with none (``polyproc.pool.Pool()``,
a manager's server making a ``Pool``) asks ``engine_context`` here.

The default start method is the stdlib's own setting, shared (see
``polyproc.context``), so the default context is read from it on each call.
"""
from __future__ import annotations

import multiprocessing.context as _std_context
import sys
from multiprocessing import reduction as _reduction
from typing import Any

from .process import ForkProcess, ForkServerProcess, PolyProcess, SpawnProcess

__all__ = ["ForkContext", "SpawnContext", "ForkServerContext", "for_start_method",
           "engine_context", "default_context"]


class ForkContext(_std_context.ForkContext):
    # polyproc's process classes derive from BaseProcess, not from the
    # stdlib's per-method ones that typeshed declares here.
    Process = ForkProcess  # type: ignore[assignment]


class SpawnContext(_std_context.SpawnContext):
    Process = SpawnProcess  # type: ignore[assignment]  # as ForkContext


class ForkServerContext(_std_context.ForkServerContext):
    Process = ForkServerProcess  # type: ignore[assignment]  # as ForkContext


_CONTEXTS: dict[str, Any] = {"fork": ForkContext(), "spawn": SpawnContext()}
if sys.platform != "win32" and _reduction.HAVE_SEND_HANDLE:
    _CONTEXTS["forkserver"] = ForkServerContext()


def for_start_method(method: str) -> Any:
    """The context of start method *method* whose ``Process`` is polyproc's.

    Raises ``ValueError`` for a start method this platform does not have.
    """
    try:
        ctx = _CONTEXTS[method]
    except KeyError:
        raise ValueError(f"cannot find context for {method!r}") from None
    ctx._check_available()
    return ctx


def default_context() -> Any:
    """The context of the default start method (the stdlib's setting, which
    this call fixes if it was not set yet, as ``get_start_method()`` does)."""
    return _CONTEXTS[_std_context._default_context.get_start_method()]


def engine_context(context: Any = None) -> Any:
    """The context a pool starts its workers with, given the caller's *context*.

    ``None``: the default context.  A context whose ``Process`` is
    polyproc's (every ``polyproc.get_context(...)``): *context* itself.  Any
    other (a stdlib context, ``multiprocessing.get_context("spawn")``):
    polyproc's context of the same start method, so that workers get the
    daemon watchdog all the same.
    """
    if context is None:
        return default_context()
    process_class = getattr(context, "Process", None)
    if isinstance(process_class, type) and issubclass(process_class, PolyProcess):
        return context
    return for_start_method(context.get_start_method())
