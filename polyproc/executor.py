"""polyproc's ``concurrent.futures.Executor``: ``polyproc.Executor``.

A drop-in for ``concurrent.futures.ProcessPoolExecutor`` that runs on the
same scheduler as ``polyproc.Pool``, so that a worker's death fails only the
future of the task it was running.  This module only re-exports; the
implementation and its design notes are in ``polyproc/_pool/executor.py`` (and
docs/executor.md).
"""
from __future__ import annotations

from ._exceptions import (ExecutorInitializerError, ExecutorUnloadableError,
                          ExecutorWorkerLostError)
from ._pool.executor import Executor

__all__ = ["Executor", "ExecutorWorkerLostError", "ExecutorInitializerError",
           "ExecutorUnloadableError"]

from ._public import fixup_module_metadata as _fixup

_fixup(__name__, {"Executor": Executor})
