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
        concurrent.futures.process.ProcessPoolExecutor) -> a subclass of
        polyproc.Executor named ProcessPoolExecutor (same signature:
        max_workers, mp_context, initializer, initargs,
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

Cheap, because every spawned worker of a patched program calls it: the
``multiprocessing`` names and the preparation data are patched at once
(0.3 ms); ``multiprocessing.pool``, ``concurrent.futures`` and
``concurrent.futures.process`` are patched when they are imported (now, if
they are already), by an import hook first on ``sys.meta_path`` that wraps
their loaders.  Importing them all, with polyproc's pool and executor,
would cost each worker tens of milliseconds for modules it seldom uses.
When polyproc's own module is the one importing the stdlib's (importing
``polyproc.executor`` imports ``concurrent.futures``), the patch waits
for polyproc's module to be complete.

Rejected: an environment variable alone (nothing in a fresh interpreter
reads it before the main module is imported), a ``sitecustomize`` (it
would patch every Python program started with that environment), and
patching the stdlib's context *classes* (the stdlib's own internals,
which polyproc reuses, would start building polyproc's objects).

``patch(cluster=..., timeline=...)`` sets defaults that every Pool made
through a patched name or a polyproc context factory receives, when its
class accepts the keyword (a call's own keyword wins); the timeline file
is numbered per pool (``_TimelineFiles``: run.json, run-2.json, ...).  The
cluster address is passed on to patched children; the timeline file is not (each
child's Pools would overwrite the main program's file).  ``unpatch()``
restores everything.
"""
from __future__ import annotations

import importlib
import os
import sys
import threading
from typing import Any

from . import context as _context

__all__ = ["patch", "unpatch", "is_patched"]

# The key of the entry patch() adds to the spawn preparation data.
PREPARATION_KEY = "polyproc_patch"

# The stdlib modules patched only once they are imported, and the polyproc
# modules their replacements come from (engine first, then public).
# Importing them all at patch() would cost every spawned child of a patched
# program (each worker of its pools) tens of ms for modules a worker seldom
# uses (concurrent.futures.process alone: ~10 ms, see _exceptions.py).
_LAZY_TARGETS: dict[str, tuple[str, ...]] = {
    "multiprocessing.pool": ("polyproc._pool.api", "polyproc.pool"),
    "concurrent.futures": ("polyproc._pool.executor", "polyproc.executor"),
    "concurrent.futures.process": ("polyproc._pool.executor", "polyproc.executor"),
}

# Held while the tables below change, never while importing (an import
# takes the module's import lock: two orders would deadlock).
_lock = threading.RLock()
# While patched: (module, attribute) -> what was there (_MISSING: nothing,
# as for concurrent.futures' lazily imported names).
_saved: dict[tuple[Any, str], Any] = {}
_MISSING = object()
_patched = False
# Lazy targets not patched yet: not imported, or their polyproc module was
# being imported when they were (an import cycle: retried once it is done).
_pending: set[str] = set()
# Modules the import hook is executing now.
_executing: set[str] = set()
# The classes the patched names get, made once per patch() (so that
# concurrent.futures' and concurrent.futures.process' are one class).
_classes: dict[str, type] = {}
# The keyword arguments the children of this process are patched with.
_child_defaults: dict[str, Any] = {}


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
    global _patched
    import multiprocessing
    import multiprocessing.spawn


    asked = {k: v for k, v in (("cluster", cluster), ("timeline", timeline))
             if v is not None}
    pool_defaults: dict[str, Any] = {}
    executor_defaults: dict[str, Any] = {}
    if asked:   # (polyproc.pool and polyproc.executor only when needed)
        from . import pool as _pool
        from .executor import Executor
        pool_defaults = _accepted(_pool.Pool, asked, required=True)
        executor_defaults = _accepted(Executor, asked, required=False)
        if timeline is not None:   # one numbering for Pools and Executors
            files = _TimelineFiles(timeline)
            for defaults in (pool_defaults, executor_defaults):
                if "timeline" in defaults:
                    defaults["timeline"] = files
    # The very objects the package exports (``multiprocessing.Pool is
    # polyproc.Pool``: a bound method made once), read from the package
    # already imported (importing it here would make an import cycle).
    package = sys.modules[__package__]
    with _lock:
        _patched = True
        # What polyproc's own context factories (polyproc.Pool(),
        # multiprocessing.Pool() once patched, get_context(m).Pool())
        # and the patched classes give every Pool and Executor beneath
        # the call's keywords.
        _context._factory_defaults["Pool"] = pool_defaults
        _context._factory_defaults["Executor"] = executor_defaults
        _classes.clear()
        _child_defaults.clear()
        if isinstance(cluster, str):   # an address travels; a client object would not
            _child_defaults["cluster"] = cluster
        _replace(multiprocessing, {name: getattr(package, name) for name in (
            "Process", "Pool", "Queue", "SimpleQueue", "JoinableQueue", "Manager",
            "Pipe", "get_context")})
        _replace(multiprocessing.spawn, {"get_preparation_data": _preparation_data})
        _pending.update(_LAZY_TARGETS)
        if _IMPORT_HOOK not in sys.meta_path:
            sys.meta_path.insert(0, _IMPORT_HOOK)
    _patch_imported_targets()


def unpatch() -> None:
    """Undo ``patch()``: the stdlib's objects are back.  A no-op when not patched.

    Children already started stay as they are.
    """
    global _patched
    with _lock:
        if _IMPORT_HOOK in sys.meta_path:
            sys.meta_path.remove(_IMPORT_HOOK)
        for (module, name), original in _saved.items():
            if original is _MISSING:
                module.__dict__.pop(name, None)
            else:
                setattr(module, name, original)
        _saved.clear()
        _pending.clear()
        _classes.clear()
        _child_defaults.clear()
        _context._factory_defaults["Pool"] = {}
        _context._factory_defaults["Executor"] = {}
        _patched = False


def is_patched() -> bool:
    """True between ``patch()`` and ``unpatch()``."""
    return _patched


def _replace(module: Any, replacements: dict[str, Any]) -> None:
    """Set *module*'s attributes, keeping the originals for ``unpatch()``."""
    for name, replacement in replacements.items():
        if (module, name) not in _saved:
            _saved[module, name] = module.__dict__.get(name, _MISSING)
        setattr(module, name, replacement)


def _patch_imported_targets() -> None:
    """Patch the pending lazy targets that are imported, unless the polyproc
    module their replacements come from is being imported (then its end
    calls this again)."""
    with _lock:
        targets = sorted(_pending)
    for target in targets:
        module = sys.modules.get(target)
        providers = _LAZY_TARGETS[target]
        if module is None or any(p in _executing for p in providers):
            continue
        for provider in providers:   # not under _lock: see _lock
            importlib.import_module(provider)
        with _lock:
            if target in _pending:
                _pending.discard(target)
                _replace(module, _replacements(target))
    with _lock:
        if not _pending and _IMPORT_HOOK in sys.meta_path:
            sys.meta_path.remove(_IMPORT_HOOK)


def _replacements(target: str) -> dict[str, Any]:
    if target == "multiprocessing.pool":
        from .pool import Pool, ThreadPool
        if "Pool" not in _classes:
            _classes["Pool"] = _with_defaults(Pool, "Pool")
        return {"Pool": _classes["Pool"], "ThreadPool": ThreadPool}
    from .executor import Executor
    if "Executor" not in _classes:
        # Under the stdlib's name: a program that shows type(executor).__name__
        # prints what it printed without polyproc.
        _classes["Executor"] = _with_defaults(Executor, "Executor",
                                              name="ProcessPoolExecutor")
    return {"ProcessPoolExecutor": _classes["Executor"]}


class _ImportHook:   # an importlib.abc.MetaPathFinder, by its methods
    """Patches a lazy target as soon as it is imported (see ``_LAZY_TARGETS``).

    First on ``sys.meta_path`` while targets are pending; it finds the
    targets and their polyproc modules with the finders after it, and
    wraps the loader so that the end of each import patches what can now
    be patched.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        with _lock:
            watched = set(_pending).union(*(_LAZY_TARGETS[t] for t in _pending))
        if fullname not in watched:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:   # (a Loader by its methods)
                    spec.loader = _PatchAfterLoading(  # type: ignore[assignment]
                        spec.loader, fullname)
                return spec
        return None


class _PatchAfterLoading:
    """A module's own loader, then ``_patch_imported_targets()``.

    (Not an ``importlib.abc`` subclass: importing that module costs
    ``import polyproc`` six more modules, importlib.resources among them.)
    """

    def __init__(self, loader: Any, name: str):
        self._loader = loader
        self._name = name

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with _lock:
            _executing.add(self._name)
        try:
            self._loader.exec_module(module)
        finally:
            with _lock:
                _executing.discard(self._name)
        _patch_imported_targets()

    def __getattr__(self, name: str) -> Any:   # get_source, get_code, ... of the loader
        return getattr(self._loader, name)


_IMPORT_HOOK = _ImportHook()


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


def _with_defaults(cls: type, kind: str, name: str | None = None) -> type:
    """*cls* itself, or, when patch() set defaults for *kind* ("Pool" or
    "Executor") or *name* is not *cls*'s, a subclass called *name* that adds
    the defaults to each call.

    A subclass, not a function, so that ``isinstance`` and subclassing
    (``class MyPool(multiprocessing.pool.Pool)``) keep working.
    """
    name = name or cls.__name__
    if not _context._factory_defaults[kind] and name == cls.__name__:
        return cls

    class WithDefaults(cls):
        __doc__ = cls.__doc__

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**_context._defaults_for(kind, kwargs), **kwargs})

    WithDefaults.__name__ = WithDefaults.__qualname__ = name
    WithDefaults.__module__ = cls.__module__
    return WithDefaults


class _TimelineFiles(_context._PerPool):
    """``patch(timeline=FILE)``: the file of each pool, in the order they are made.

    The first Pool or Executor writes FILE itself, the next ones FILE with
    ``-2``, ``-3``, ... before its extension (``run.json``, ``run-2.json``):
    one file per pool, since each pool's trace is its own (times from its
    start, its workers) and is written when that pool is done.  A
    ``context._PerPool``: asked once per pool, from any thread.

    Only in the process that called ``patch()``: a forked child (a
    ``Process`` that makes a Pool) inherits this object, and its copy of
    the count would give its pools the names of the parent's next ones;
    its pools record no timeline, as a spawned child's (not given the file).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self._stem, self._extension = os.path.splitext(os.fspath(path))
        self._made = 0
        self._lock = threading.Lock()
        self._owner = os.getpid()

    def next_value(self) -> str | None:
        if os.getpid() != self._owner:
            return None   # timeline=None: record nothing
        with self._lock:
            self._made += 1
            made = self._made
        suffix = "" if made == 1 else f"-{made}"
        return f"{self._stem}{suffix}{self._extension}"


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
