"""``polyproc.process``: the stdlib's ``multiprocessing.process`` with polyproc's ``Process``.

``BaseProcess``, ``current_process``, ``active_children`` and
``parent_process`` are the stdlib's; ``Process`` and the per-start-method
classes are polyproc's (``PolyProcess``: the exception channel, the daemon
watchdog, the stdin guard, the main-guard message).  The implementation is
in ``polyproc/_process/`` (docs/process.md); this module only re-exports.
"""
from __future__ import annotations

from ._process.process import (BaseProcess, ForkProcess, ForkServerProcess,
                               PolyProcess, Process, SpawnProcess,
                               active_children, current_process,
                               parent_process)

__all__ = [
    "BaseProcess", "PolyProcess", "Process", "ForkProcess", "SpawnProcess",
    "ForkServerProcess", "current_process", "active_children",
    "parent_process",
]

