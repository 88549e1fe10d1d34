"""Process objects: the stdlib's ``BaseProcess`` plus polyproc's guarantees.

Adapted from ``multiprocessing.process`` and the Process classes of
``multiprocessing.context``.  Reused unchanged: ``BaseProcess`` (the whole
life cycle: ``start``, ``join``, ``terminate``, ``exitcode``...),
``current_process``, ``active_children``, ``parent_process``, and the
stdlib's Popen classes that launch children for each start method; they are
correct and battle-tested.

Added by ``PolyProcess`` (see ``_child.py`` for the child side):

* a daemon child never outlives its parent, even a parent killed by SIGKILL;
* an exception raised by ``run()`` is available in the parent as
  ``p.exception``;
* reading stdin in a child raises ``StdinUnavailableError`` with a message
  that says how to pass data instead;
* a script that starts processes without the ``__main__`` guard gets one
  clear ``MainGuardError`` instead of a cascade of recursive errors.
"""
from __future__ import annotations

from multiprocessing.process import (BaseProcess, active_children,
                                     current_process, parent_process)

__all__ = [
    "BaseProcess", "PolyProcess", "Process", "ForkProcess", "SpawnProcess",
    "ForkServerProcess", "current_process", "active_children",
    "parent_process",
]


class PolyProcess(BaseProcess):
    """Base of polyproc's process classes (one per start method)."""

    @property
    def exception(self) -> BaseException | None:
        """The exception ``run()`` raised in the child, or ``None``."""
        return None


class Process(PolyProcess):
    """A process started with polyproc's default start method."""

    _start_method = None

    @staticmethod
    def _Popen(process_obj):
        from .context import _default_context
        return _default_context.get_context().Process._Popen(process_obj)

    @staticmethod
    def _after_fork():
        from .context import _default_context
        return _default_context.get_context().Process._after_fork()


class ForkProcess(PolyProcess):
    _start_method = "fork"

    @staticmethod
    def _Popen(process_obj):
        from multiprocessing.popen_fork import Popen
        return Popen(process_obj)


class SpawnProcess(PolyProcess):
    _start_method = "spawn"

    @staticmethod
    def _Popen(process_obj):
        from multiprocessing.popen_spawn_posix import Popen
        return Popen(process_obj)

    @staticmethod
    def _after_fork():
        # The process was spawned: nothing was inherited, nothing to reset.
        pass


class ForkServerProcess(PolyProcess):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj):
        from multiprocessing.popen_forkserver import Popen
        return Popen(process_obj)
