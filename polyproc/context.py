"""Start-method contexts: the stdlib's, with polyproc's classes plugged in.

Adapted from ``multiprocessing.context``.  What is reused and what changed:

* The stdlib's ``BaseContext`` supplies every factory that is correct as it
  is (``Lock``, ``Event``, ``Value``, ``Pipe``, ``RawArray``, ...): those
  wrap OS primitives that work, and re-implementing them would only add
  bugs.
* ``Process``, ``Pool``, ``Queue``, ``JoinableQueue``, ``SimpleQueue`` and
  ``Manager`` are overridden to return polyproc's own implementations;
  ``Lock``, ``RLock``, ``Semaphore`` and ``BoundedSemaphore`` to return the
  stdlib's classes with Python 3.14's ``locked()`` on older Pythons
  (``polyproc.synchronize``).
* ``get_context(method)`` returns *polyproc's* concrete contexts (the
  stdlib's would hand back stdlib classes).
* The default start method is *shared* with the stdlib: ``set_start_method``
  and ``get_start_method`` read and write the stdlib's default context.  A
  spawned child sets the stdlib's start method while it bootstraps
  (``multiprocessing.spawn.prepare``); sharing the setting means polyproc's
  choice travels into the child with no extra machinery, and libraries
  that ask ``multiprocessing.get_start_method()`` see the same answer.
"""
from __future__ import annotations

import multiprocessing.context as _std_context
import sys
from typing import (TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Literal, Mapping,
                    overload)

from . import process as _process
from ._process import context as _engine_context

if TYPE_CHECKING:
    # For annotations only: the factories import these on first use (the
    # import cost of ``import polyproc`` stays as it is).  Aliased, because
    # the methods below carry the same names.
    from . import synchronize as _synchronize
    from .connection import Connection as _Connection
    from .executor import Executor as _Executor
    from .managers import SyncManager as _SyncManager
    from .pool import Pool as _Pool
    from .queues import JoinableQueue as _JoinableQueue
    from .queues import Queue as _Queue
    from .queues import SimpleQueue as _SimpleQueue

    # What type checkers see as the factories' base: a stdlib context,
    # which every polyproc context is at runtime (the mixin comes first
    # in each one's bases), so that Value, Event, ... are known, and a
    # polyproc context is accepted wherever a stdlib one is
    # (``ProcessPoolExecutor(mp_context=...)``).
    _FactoriesBase = _std_context.BaseContext
else:
    _FactoriesBase = object

__all__ = [
    "BaseContext", "DefaultContext", "ForkContext", "SpawnContext",
    "ForkServerContext", "get_spawning_popen", "set_spawning_popen",
    "assert_spawning", "reduction",
]

# Reused unchanged: spawning state is global to the stdlib's Popen classes,
# which polyproc uses, so it must be the stdlib's own.
get_spawning_popen = _std_context.get_spawning_popen
set_spawning_popen = _std_context.set_spawning_popen
assert_spawning = _std_context.assert_spawning
if TYPE_CHECKING:
    # typeshed's context.pyi omits the module's own ``from . import reduction``.
    from multiprocessing import reduction as reduction
else:
    reduction = _std_context.reduction
ProcessError = _std_context.ProcessError
BufferTooShort = _std_context.BufferTooShort
TimeoutError = _std_context.TimeoutError
AuthenticationError = _std_context.AuthenticationError


# Keyword arguments that ``polyproc.patch(cluster=..., timeline=...)`` gives
# every Pool and Executor made by a context's factory (``polyproc.Pool()``,
# ``multiprocessing.Pool()`` once patched, ``get_context(m).Pool()``),
# beneath the call's own.  Written by polyproc.monkey only.  A value that
# is a ``_PerPool`` is asked for a fresh value for each pool (the numbered
# timeline files of a program with several pools).
_factory_defaults: dict[str, dict[str, Any]] = {"Pool": {}, "Executor": {}}


class _PerPool:
    """A factory default whose value differs per pool: ``next_value()`` is
    called once for each Pool or Executor that receives it."""

    def next_value(self) -> Any:
        raise NotImplementedError


def _defaults_for(kind: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The ``_factory_defaults[kind]`` that the keywords *given* by the call
    leave to apply, with each ``_PerPool`` replaced by its next value."""
    return {name: value.next_value() if isinstance(value, _PerPool) else value
            for name, value in _factory_defaults[kind].items() if name not in given}


class _PolyFactories(_FactoriesBase):
    """The factories polyproc overrides; mixed into every context below.

    ``Pool``, the queues and ``Manager`` return polyproc's classes where
    typeshed's stdlib context returns the stdlib's; polyproc's duck-type
    the stdlib's but do not subclass them, hence ``type: ignore[override]``
    on each.
    """

    # Every concrete context sets it to one of polyproc.process's classes.
    Process: ClassVar[type[_process.PolyProcess]]

    def Pool(  # type: ignore[override]
            self, processes: int | None = None,
            initializer: Callable[..., object] | None = None,
            initargs: Iterable[Any] = (), maxtasksperchild: int | None = None,
            **extras: Any) -> _Pool:
        """Returns a process pool object (``polyproc.pool.Pool``)."""
        from .pool import Pool
        return Pool(processes, initializer, initargs, maxtasksperchild,
                    context=self.get_context(),
                    **{**_defaults_for("Pool", extras), **extras})

    # Lock, RLock, Semaphore, BoundedSemaphore: the stdlib's, with 3.14's
    # locked() on older Pythons (polyproc.synchronize).
    def Lock(self) -> _synchronize.Lock:
        """Returns a non-recursive lock object."""
        from .synchronize import Lock
        return Lock(ctx=self.get_context())

    def RLock(self) -> _synchronize.RLock:
        """Returns a recursive lock object."""
        from .synchronize import RLock
        return RLock(ctx=self.get_context())

    def Semaphore(self, value: int = 1) -> _synchronize.Semaphore:
        """Returns a semaphore object."""
        from .synchronize import Semaphore
        return Semaphore(value, ctx=self.get_context())

    def BoundedSemaphore(self, value: int = 1) -> _synchronize.BoundedSemaphore:
        """Returns a bounded semaphore object."""
        from .synchronize import BoundedSemaphore
        return BoundedSemaphore(value, ctx=self.get_context())

    def Pipe(self, duplex: bool = True) -> tuple[_Connection, _Connection]:
        """Returns two connection objects connected by a pipe.

        polyproc's connections: ``send``/``recv`` move large buffers through
        shared memory (see ``polyproc.connection``).
        """
        from .connection import Pipe
        return Pipe(duplex)

    def Queue(self, maxsize: int = 0) -> _Queue[Any]:  # type: ignore[override]
        """Returns a queue object."""
        from .queues import Queue
        return Queue(maxsize, ctx=self.get_context())

    def JoinableQueue(  # type: ignore[override]
            self, maxsize: int = 0) -> _JoinableQueue[Any]:
        """Returns a queue object."""
        from .queues import JoinableQueue
        return JoinableQueue(maxsize, ctx=self.get_context())

    def SimpleQueue(self) -> _SimpleQueue[Any]:  # type: ignore[override]
        """Returns a queue object."""
        from .queues import SimpleQueue
        return SimpleQueue(ctx=self.get_context())

    def Manager(self) -> _SyncManager:  # type: ignore[override]
        """Returns a manager associated with a running server process.

        The manager's methods such as ``Lock()``, ``Condition()`` and
        ``Queue()`` can be used to create shared objects.
        """
        from .managers import SyncManager
        m = SyncManager(ctx=self.get_context())
        m.start()
        return m

    def Executor(self, max_workers: int | None = None, **kwargs: Any) -> _Executor:
        """Returns a ``concurrent.futures.Executor`` on polyproc's scheduler."""
        from .executor import Executor
        kwargs = {**_defaults_for("Executor", kwargs), **kwargs}
        kwargs.setdefault("mp_context", self.get_context())
        return Executor(max_workers, **kwargs)

    def get_context(  # type: ignore[override]
            self, method: str | None = None) -> _PolyFactories:
        """The context of start method *method*, or this one for ``None``.

        Raises ``ValueError`` for a start method this platform lacks.
        """
        if method is None:
            return self
        try:
            ctx = _concrete_contexts[method]
        except KeyError:
            raise ValueError(f"cannot find context for {method!r}") from None
        ctx._check_available()
        return ctx


class BaseContext(_PolyFactories, _std_context.BaseContext):
    pass


# The engines' contexts (polyproc._process.context: polyproc's Process for
# each start method) with the factories above.  For type checkers the
# engine's Process (polyproc's) and the one typeshed declares on the
# stdlib's context (the stdlib's class) disagree, as _PolyFactories says.
class ForkContext(_PolyFactories, _engine_context.ForkContext):  # type: ignore[misc]
    _name = "fork"


class SpawnContext(_PolyFactories, _engine_context.SpawnContext):  # type: ignore[misc]
    _name = "spawn"


class ForkServerContext(_PolyFactories,  # type: ignore[misc]  # as ForkContext
                        _engine_context.ForkServerContext):
    _name = "forkserver"


_concrete_contexts: dict[str, _PolyFactories] = {
    "fork": ForkContext(),
    "spawn": SpawnContext(),
}
if sys.platform != "win32" and reduction.HAVE_SEND_HANDLE:
    _concrete_contexts["forkserver"] = ForkServerContext()


class DefaultContext(BaseContext):
    """The context behind ``polyproc.X``: follows the stdlib's default start method."""

    Process = _process.Process

    def get_context(  # type: ignore[override]  # as _PolyFactories
            self, method: str | None = None) -> _PolyFactories:
        if method is None:
            name = _std_context._default_context.get_start_method()
            return _concrete_contexts[name]
        return super().get_context(method)

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        if method is not None and method not in _concrete_contexts:
            raise ValueError(f"cannot find context for {method!r}")
        # _actual_context: the stdlib's record of a method set already
        # (private, so not in typeshed).
        std_default: Any = _std_context._default_context
        if (not force and std_default._actual_context is not None
                and getattr(_process.current_process(), "_inheriting", False)):
            # A child importing a script that calls set_start_method() without
            # the __main__ guard: the stdlib raises "context has already been
            # set"; say what the real problem is (see process.py).
            from ._process.child import refuse_start_while_importing_main
            refuse_start_while_importing_main("set_start_method() was called")
        _std_context._default_context.set_start_method(method, force)

    @overload
    def get_start_method(self, allow_none: Literal[False] = False) -> str: ...
    @overload
    def get_start_method(self, allow_none: bool) -> str | None: ...

    def get_start_method(self, allow_none: bool = False) -> str | None:
        return _std_context._default_context.get_start_method(allow_none)

    def get_all_start_methods(self) -> list[str]:
        return _std_context._default_context.get_all_start_methods()


_default_context = DefaultContext()
