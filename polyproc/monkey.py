"""``polyproc.patch()``: ``multiprocessing`` and ``concurrent.futures`` become polyproc's.

As gevent's ``monkey.patch_all()``: after ``polyproc.patch()``, the
*module attributes* below are polyproc's objects, so that code written for
the stdlib, and the third-party libraries it calls, get polyproc without a
change (``python -m polyproc run SCRIPT`` calls ``patch()`` before the
script starts)::

    multiprocessing.Process, Pool, Queue, SimpleQueue, JoinableQueue,
        Manager, Pipe, get_context   -> polyproc's (get_context(...) returns
                                        polyproc's contexts, whose factories
                                        make polyproc's objects)
    multiprocessing.pool.Pool, ThreadPool          -> polyproc.pool's
    concurrent.futures.ProcessPoolExecutor (and
        concurrent.futures.process.ProcessPoolExecutor) -> polyproc.Executor
        (same signature: max_workers, mp_context, initializer, initargs,
        max_tasks_per_child; a dead worker fails one future with
        WorkerLostError, a BrokenProcessPool, instead of breaking them all)

The limit, the same as gevent's: a name bound *before* ``patch()`` (``from
multiprocessing import Pool`` at the top of a module imported earlier, a
context kept from ``multiprocessing.get_context()``) keeps the stdlib's
object; only lookups made after it see polyproc's.  Patch first, at the
top of the main module, or run the program with ``python -m polyproc run``.

Children are patched too:

* fork: a child inherits the patched modules.
* spawn and forkserver: a new interpreter starts with the stdlib's modules.
  ``patch()`` wraps ``multiprocessing.spawn.get_preparation_data``, the
  dict every spawn and forkserver child unpickles *before* it imports the
  main module and the process object (``spawn._main``), and adds to it an
  entry whose unpickling calls ``patch()`` in the child.  So the child's
  main module, imported next, already sees polyproc's names.  This needs
  polyproc to be importable from the child's initial ``sys.path`` (installed,
  on ``PYTHONPATH``, or in the working directory): the parent's
  ``sys.path`` is applied only after that entry.  (On Python 3.14, whose
  fork server imports the main module itself before serving, names that
  module binds at import time in the fork server are the stdlib's.)

Rejected: an environment variable alone (nothing in a fresh interpreter
reads it before the main module is imported), a ``sitecustomize`` (it
would patch every Python program started with that environment), and
patching the stdlib's context *classes* (the stdlib's own internals,
which polyproc reuses, would start building polyproc's objects).

``patch(cluster=..., timeline=...)`` sets defaults that every Pool made
through a patched name or a polyproc context factory receives, when its
class accepts the keyword (a call's own keyword wins).  The cluster
address is passed on to patched children; the timeline file is not (each
child's Pools would overwrite the main program's file).  ``unpatch()``
restores everything.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any

__all__ = ["patch", "unpatch", "is_patched"]

# The key of the entry patch() adds to the spawn preparation data.
PREPARATION_KEY = "polyproc_patch"

_lock = threading.Lock()
# While patched: (module, attribute) -> what was there (_MISSING: nothing,
# as for concurrent.futures' lazily imported names).
_saved: dict[tuple[Any, str], Any] = {}
# The keyword arguments the children of this process are patched with.
_child_defaults: dict[str, Any] = {}
_MISSING = object()


def patch(*, cluster: str | None = None,
          timeline: str | os.PathLike[str] | None = None) -> None:
    """Make ``multiprocessing``'s and ``concurrent.futures``' process objects polyproc's.

    See the module's docstring (``polyproc.monkey``) for the names replaced
    and for the limit: names bound before the call keep the stdlib's
    objects, so call it as early as possible.  Children started by the
    patched program, with any start method, are patched too.

    *cluster* (an address) and *timeline* (a file) become defaults of every
    Pool (and Executor, when it takes them) made through a patched name;
    a keyword given by the call wins.  Each call sets the state afresh:
    calling it again with the same arguments changes nothing, with other
    arguments replaces the defaults.

    Raises ``TypeError``, and patches nothing, when *cluster* or *timeline*
    is given but this polyproc's ``Pool`` does not take that keyword (the
    cluster backend or the timeline is not available).
    """
    import concurrent.futures
    import concurrent.futures.process
    import multiprocessing
    import multiprocessing.pool
    import multiprocessing.spawn

    from . import context as _context
    from . import pool as _pool
    from .executor import Executor

    asked = {k: v for k, v in (("cluster", cluster), ("timeline", timeline))
             if v is not None}
    pool_defaults = _accepted(_pool.Pool, asked, required=True)
    executor_defaults = _accepted(Executor, asked, required=False)
    # The very objects the package exports (``multiprocessing.Pool is
    # polyproc.Pool``: a bound method made once), read from the package
    # already imported (importing it here would make an import cycle).
    ctx = sys.modules[__package__]
    executor_class = _with_defaults(Executor, executor_defaults)
    replacements: list[tuple[Any, str, Any]] = [
        (multiprocessing, "Process", ctx.Process),
        (multiprocessing, "Pool", ctx.Pool),
        (multiprocessing, "Queue", ctx.Queue),
        (multiprocessing, "SimpleQueue", ctx.SimpleQueue),
        (multiprocessing, "JoinableQueue", ctx.JoinableQueue),
        (multiprocessing, "Manager", ctx.Manager),
        (multiprocessing, "Pipe", ctx.Pipe),
        (multiprocessing, "get_context", ctx.get_context),
        (multiprocessing.pool, "Pool", _with_defaults(_pool.Pool, pool_defaults)),
        (multiprocessing.pool, "ThreadPool", _pool.ThreadPool),
        (concurrent.futures, "ProcessPoolExecutor", executor_class),
        (concurrent.futures.process, "ProcessPoolExecutor", executor_class),
        (multiprocessing.spawn, "get_preparation_data", _preparation_data),
    ]
    with _lock:
        for module, name, replacement in replacements:
            if (module, name) not in _saved:
                _saved[module, name] = module.__dict__.get(name, _MISSING)
            setattr(module, name, replacement)
        # What polyproc's own context factories (polyproc.Pool(),
        # multiprocessing.Pool() once patched, get_context(m).Pool())
        # give every Pool and Executor beneath the call's keywords.
        _context._factory_defaults["Pool"] = pool_defaults
        _context._factory_defaults["Executor"] = executor_defaults
        _child_defaults.clear()
        if isinstance(cluster, str):   # an address travels; a client object would not
            _child_defaults["cluster"] = cluster


def unpatch() -> None:
    """Undo ``patch()``: the stdlib's objects are back.  A no-op when not patched.

    Children already started stay as they are.
    """
    from . import context as _context
    with _lock:
        for (module, name), original in _saved.items():
            if original is _MISSING:
                module.__dict__.pop(name, None)
            else:
                setattr(module, name, original)
        _saved.clear()
        _child_defaults.clear()
        _context._factory_defaults["Pool"] = {}
        _context._factory_defaults["Executor"] = {}


def is_patched() -> bool:
    """True between ``patch()`` and ``unpatch()``."""
    return bool(_saved)


def _accepted(cls: type, asked: dict[str, Any], *, required: bool) -> dict[str, Any]:
    """The keywords of *asked* that *cls*'s constructor takes.

    With *required*, one it does not take raises ``TypeError``: a default
    nothing would receive is a mistake the caller must hear about.
    """
    import inspect
    parameters = inspect.signature(cls).parameters
    missing = [k for k in asked if k not in parameters]
    if required and missing:
        what = {"cluster": "the cluster backend",
                "timeline": "the timeline"}
        raise TypeError(
            f"polyproc.patch({missing[0]}=...): {what.get(missing[0], missing[0])} "
            f"is not available in this version of polyproc "
            f"({cls.__module__}.{cls.__qualname__}() takes no {missing[0]}= argument)")
    return {k: v for k, v in asked.items() if k in parameters}


def _with_defaults(cls: type, defaults: dict[str, Any]) -> type:
    """*cls* itself, or with *defaults*, a subclass that adds them to each call.

    A subclass, not a function, so that ``isinstance`` and subclassing
    (``class MyPool(multiprocessing.pool.Pool)``) keep working.
    """
    if not defaults:
        return cls

    class WithDefaults(cls):
        __doc__ = cls.__doc__

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**defaults, **kwargs})

    WithDefaults.__name__ = WithDefaults.__qualname__ = cls.__name__
    return WithDefaults


def _preparation_data(name: str) -> dict[str, Any]:
    """``multiprocessing.spawn.get_preparation_data``, plus the entry that
    patches the child (see the module's docstring)."""
    original = _saved[_spawn_module(), "get_preparation_data"]
    data: dict[str, Any] = original(name)
    data[PREPARATION_KEY] = _PatchInChild(dict(_child_defaults))
    return data


def _spawn_module() -> Any:
    import multiprocessing.spawn
    return multiprocessing.spawn


class _PatchInChild:
    """Pickles as a call of ``_patch_in_child``: unpickling it patches the child."""

    def __init__(self, defaults: dict[str, Any]):
        self.defaults = defaults

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _patch_in_child, (self.defaults,)


def _patch_in_child(defaults: dict[str, Any]) -> bool:
    """Run in a spawn or forkserver child while it unpickles its preparation data."""
    patch(**defaults)
    return True
