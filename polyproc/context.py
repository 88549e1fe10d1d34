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
import os
import sys
from typing import Any

from . import process as _process
from ._process import context as _engine_context

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
reduction = _std_context.reduction
ProcessError = _std_context.ProcessError
BufferTooShort = _std_context.BufferTooShort
TimeoutError = _std_context.TimeoutError
AuthenticationError = _std_context.AuthenticationError


class _PolyFactories:
    """The factories polyproc overrides; mixed into every context below."""

    def Pool(self, processes: int | None = None, initializer=None,
             initargs=(), maxtasksperchild: int | None = None, **extras: Any):
        """Returns a process pool object (``polyproc.pool.Pool``)."""
        from .pool import Pool
        return Pool(processes, initializer, initargs, maxtasksperchild,
                    context=self.get_context(), **extras)

    # Lock, RLock, Semaphore, BoundedSemaphore: the stdlib's, with 3.14's
    # locked() on older Pythons (polyproc.synchronize).
    def Lock(self):
        """Returns a non-recursive lock object."""
        from .synchronize import Lock
        return Lock(ctx=self.get_context())

    def RLock(self):
        """Returns a recursive lock object."""
        from .synchronize import RLock
        return RLock(ctx=self.get_context())

    def Semaphore(self, value: int = 1):
        """Returns a semaphore object."""
        from .synchronize import Semaphore
        return Semaphore(value, ctx=self.get_context())

    def BoundedSemaphore(self, value: int = 1):
        """Returns a bounded semaphore object."""
        from .synchronize import BoundedSemaphore
        return BoundedSemaphore(value, ctx=self.get_context())

    def Pipe(self, duplex: bool = True):
        """Returns two connection objects connected by a pipe.

        polyproc's connections: ``send``/``recv`` move large buffers through
        shared memory (see ``polyproc.connection``).
        """
        from .connection import Pipe
        return Pipe(duplex)

    def Queue(self, maxsize: int = 0):
        """Returns a queue object."""
        from .queues import Queue
        return Queue(maxsize, ctx=self.get_context())

    def JoinableQueue(self, maxsize: int = 0):
        """Returns a queue object."""
        from .queues import JoinableQueue
        return JoinableQueue(maxsize, ctx=self.get_context())

    def SimpleQueue(self):
        """Returns a queue object."""
        from .queues import SimpleQueue
        return SimpleQueue(ctx=self.get_context())

    def Manager(self):
        """Returns a manager associated with a running server process.

        The manager's methods such as ``Lock()``, ``Condition()`` and
        ``Queue()`` can be used to create shared objects.
        """
        from .managers import SyncManager
        m = SyncManager(ctx=self.get_context())
        m.start()
        return m

    def Executor(self, max_workers: int | None = None, **kwargs: Any):
        """Returns a ``concurrent.futures.Executor`` on polyproc's scheduler."""
        from .executor import Executor
        kwargs.setdefault("mp_context", self.get_context())
        return Executor(max_workers, **kwargs)

    def get_context(self, method: str | None = None):
        if method is None:
            return self
        try:
            ctx = _concrete_contexts[method]
        except KeyError:
            raise ValueError("cannot find context for %r" % method) from None
        ctx._check_available()
        return ctx


class BaseContext(_PolyFactories, _std_context.BaseContext):
    pass


# The engines' contexts (polyproc._process.context: polyproc's Process for
# each start method) with the factories above.
class ForkContext(_PolyFactories, _engine_context.ForkContext):
    _name = "fork"


class SpawnContext(_PolyFactories, _engine_context.SpawnContext):
    _name = "spawn"


class ForkServerContext(_PolyFactories, _engine_context.ForkServerContext):
    _name = "forkserver"


_concrete_contexts: dict[str, BaseContext] = {
    "fork": ForkContext(),
    "spawn": SpawnContext(),
}
if sys.platform != "win32" and reduction.HAVE_SEND_HANDLE:
    _concrete_contexts["forkserver"] = ForkServerContext()


class DefaultContext(BaseContext):
    """The context behind ``polyproc.X``: follows the stdlib's default start method."""

    Process = _process.Process

    def get_context(self, method: str | None = None):
        if method is None:
            name = _std_context._default_context.get_start_method()
            return _concrete_contexts[name]
        return super().get_context(method)

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        if method is not None and method not in _concrete_contexts:
            raise ValueError("cannot find context for %r" % method)
        if (not force and _std_context._default_context._actual_context is not None
                and getattr(_process.current_process(), "_inheriting", False)):
            # A child importing a script that calls set_start_method() without
            # the __main__ guard: the stdlib raises "context has already been
            # set"; say what the real problem is (see process.py).
            from ._process.child import refuse_start_while_importing_main
            refuse_start_while_importing_main("set_start_method() was called")
        _std_context._default_context.set_start_method(method, force)

    def get_start_method(self, allow_none: bool = False):
        return _std_context._default_context.get_start_method(allow_none)

    def get_all_start_methods(self):
        return _std_context._default_context.get_all_start_methods()


_default_context = DefaultContext()
