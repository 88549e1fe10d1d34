"""polyproc: ``multiprocessing``, without the hangs, faster, and able to grow.

``import polyproc as multiprocessing`` works for code written against the
standard library.  Every name of ``multiprocessing.__all__`` is here with the
same signature and meaning; polyproc's additions are extra names (below) and
extra keyword arguments.

This module only re-exports: the machinery lives in the submodules (the
public ones mirror the stdlib's layout, the private ``_modules`` hold the
implementation).  See ARCHITECTURE.md.
"""
from __future__ import annotations

import sys as _sys

# First: puts this process's zero-copy session in the environment
# (POLYPROC_SHM_SESSION) before any child can start, so that children of
# every start method share one session and its tracker (docs/zero_copy.md).
from . import _shm_tracker  # noqa: F401
from . import context as _context
from ._exceptions import (AuthenticationError, BufferTooShort,
                          FrameTooLargeError, InheritedPoolError,
                          InitializerError, InsecureAddressError,
                          MainGuardError,
                          ManagerConnectionError, ManagerProtocolError,
                          ProcessError, QueueGoneError, RemoteError,
                          RemoteTraceback, SerializationError,
                          StdinUnavailableError, TaskTimeoutError,
                          TimeoutError, WorkerLostError)
from ._instruments import (ChunkDispatched, ChunkFailed, ChunkFinished,
                           ChunkQueued, Instrument, ResultsReceived,
                           TaskRetried, TaskTimedOut, WorkerExited,
                           WorkerStarted)

__version__ = "0.1.0"

# The stdlib's names, bound to the default context's methods exactly as
# ``multiprocessing/__init__.py`` does it.
_STDLIB_NAMES = [
    "Array", "AuthenticationError", "Barrier", "BoundedSemaphore",
    "BufferTooShort", "Condition", "Event", "JoinableQueue", "Lock",
    "Manager", "Pipe", "Pool", "Process", "ProcessError", "Queue", "RLock",
    "RawArray", "RawValue", "Semaphore", "SimpleQueue", "TimeoutError",
    "Value", "active_children", "allow_connection_pickling", "cpu_count",
    "current_process", "freeze_support", "get_all_start_methods",
    "get_context", "get_logger", "get_start_method", "log_to_stderr",
    "parent_process", "reducer", "set_executable", "set_forkserver_preload",
    "set_start_method",
]
globals().update((_name, getattr(_context._default_context, _name))
                 for _name in _STDLIB_NAMES)

# polyproc's additions.
_EXTRA_NAMES = [
    "Executor", "WorkerLostError", "TaskTimeoutError", "InitializerError",
    "RemoteError", "RemoteTraceback", "SerializationError", "MainGuardError",
    "StdinUnavailableError", "QueueGoneError", "ManagerConnectionError",
    "ManagerProtocolError", "FrameTooLargeError", "InsecureAddressError",
    "process_cpu_count",
    "InheritedPoolError",
    # Instruments that watch a pool work, and the records of their events.
    "Instrument", "ChunkQueued", "ChunkDispatched", "ResultsReceived",
    "ChunkFinished", "ChunkFailed", "TaskRetried", "TaskTimedOut",
    "WorkerStarted", "WorkerExited",
]
Executor = _context._default_context.Executor
# The CPUs this process may use (3.13's os.process_cpu_count, on every
# Python, capped by a container's CPU quota): what Pool() and Executor()
# default to.  cpu_count() keeps the stdlib's meaning, the machine's CPUs.
from ._cpu import process_cpu_count as process_cpu_count

__all__ = _STDLIB_NAMES + _EXTRA_NAMES

# Public names report their public module (``polyproc.WorkerLostError``,
# not ``polyproc._exceptions.WorkerLostError``) in reprs, tracebacks and
# pickles.
from ._public import fixup_module_metadata as _fixup

_fixup(__name__, {name: globals()[name] for name in _EXTRA_NAMES
                  if isinstance(globals()[name], type)})
del _fixup

SUBDEBUG = 5
SUBWARNING = 25

if "__main__" in _sys.modules:
    _sys.modules["__mp_main__"] = _sys.modules["__main__"]
