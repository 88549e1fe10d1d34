"""polyproc: ``multiprocessing``, without the hangs, faster, and able to grow.

``import polyproc as multiprocessing`` works for code written against the
standard library.  Every name of ``multiprocessing.__all__`` is here with the
same signature and meaning; polyproc's additions are extra names (below) and
extra keyword arguments.

This module only re-exports: the machinery lives in the submodules (the
public ones mirror the stdlib's layout, the private ``_modules`` hold the
implementation).  See ARCHITECTURE.md.

Every name is bound explicitly (``X = ...`` or ``import ... as X``), not
through ``globals()``, so that type checkers see it with its type
(``py.typed``); tests/test_typing.py type-checks a user's program.
"""
from __future__ import annotations

import sys as _sys
import typing as _typing

# First: puts this process's zero-copy session in the environment
# (POLYPROC_SHM_SESSION) before any child can start, so that children of
# every start method share one session and its tracker (docs/zero_copy.md).
from ._transport import tracker as _tracker  # noqa: F401
from . import context as _context
# The CPUs this process may use (3.13's os.process_cpu_count, on every
# Python, capped by a container's CPU quota): what Pool() and Executor()
# default to.  cpu_count() keeps the stdlib's meaning, the machine's CPUs.
from ._cpu import process_cpu_count as process_cpu_count
from ._exceptions import AuthenticationError as AuthenticationError
from ._exceptions import BufferTooShort as BufferTooShort
from ._exceptions import ClusterDependencyError as ClusterDependencyError
from ._exceptions import ClusterError as ClusterError
from ._exceptions import FrameTooLargeError as FrameTooLargeError
from ._exceptions import InheritedPoolError as InheritedPoolError
from ._exceptions import InitializerError as InitializerError
from ._exceptions import InsecureAddressError as InsecureAddressError
from ._exceptions import MainGuardError as MainGuardError
from ._exceptions import ManagerConnectionError as ManagerConnectionError
from ._exceptions import ManagerProtocolError as ManagerProtocolError
from ._exceptions import ProcessError as ProcessError
from ._exceptions import QueueGoneError as QueueGoneError
from ._exceptions import RemoteError as RemoteError
from ._exceptions import RemoteTraceback as RemoteTraceback
from ._exceptions import SerializationError as SerializationError
from ._exceptions import StdinUnavailableError as StdinUnavailableError
from ._exceptions import TaskTimeoutError as TaskTimeoutError
from ._exceptions import TimeoutError as TimeoutError
from ._exceptions import WorkerLostError as WorkerLostError
from ._pool.instruments import ChunkCancelled as ChunkCancelled
from ._pool.instruments import ChunkDispatched as ChunkDispatched
from ._pool.instruments import ChunkFailed as ChunkFailed
from ._pool.instruments import ChunkFinished as ChunkFinished
from ._pool.instruments import ChunkQueued as ChunkQueued
from ._pool.instruments import Instrument as Instrument
from ._pool.instruments import ResultsReceived as ResultsReceived
from ._pool.instruments import TaskProgress as TaskProgress
from ._pool.instruments import TaskRetried as TaskRetried
from ._pool.instruments import TaskTimedOut as TaskTimedOut
from ._pool.instruments import WorkerExited as WorkerExited
from ._pool.instruments import WorkerStarted as WorkerStarted
# A task's own progress, drawn by the parent under the call's bar.
from ._pool.task_progress import progress as progress
from ._public import fixup_module_metadata as _fixup
# polyproc.patch(): multiprocessing's and concurrent.futures' names become
# polyproc's (polyproc/monkey.py; cheap to import, it imports on first call).
from .monkey import patch as patch
from .monkey import unpatch as unpatch
# The default context's Process class (DefaultContext.Process), imported as
# a class so that ``p: polyproc.Process`` is a valid annotation.
from .process import Process as Process

__version__ = "0.1.0"

# The stdlib's names, bound to the default context's methods exactly as
# ``multiprocessing/__init__.py`` does it: bound methods, so that what they
# make follows set_start_method().  (The exceptions above and Process are
# the very objects the default context holds; test_exports checks it.)
Array = _context._default_context.Array
Barrier = _context._default_context.Barrier
BoundedSemaphore = _context._default_context.BoundedSemaphore
Condition = _context._default_context.Condition
Event = _context._default_context.Event
JoinableQueue = _context._default_context.JoinableQueue
Lock = _context._default_context.Lock
Manager = _context._default_context.Manager
Pipe = _context._default_context.Pipe
Pool = _context._default_context.Pool
Queue = _context._default_context.Queue
RLock = _context._default_context.RLock
RawArray = _context._default_context.RawArray
RawValue = _context._default_context.RawValue
Semaphore = _context._default_context.Semaphore
SimpleQueue = _context._default_context.SimpleQueue
Value = _context._default_context.Value
active_children = _context._default_context.active_children
allow_connection_pickling = _context._default_context.allow_connection_pickling
cpu_count = _context._default_context.cpu_count
current_process = _context._default_context.current_process
freeze_support = _context._default_context.freeze_support
get_all_start_methods = _context._default_context.get_all_start_methods
get_context = _context._default_context.get_context
get_logger = _context._default_context.get_logger
get_start_method = _context._default_context.get_start_method
log_to_stderr = _context._default_context.log_to_stderr
parent_process = _context._default_context.parent_process
set_executable = _context._default_context.set_executable
set_forkserver_preload = _context._default_context.set_forkserver_preload
set_start_method = _context._default_context.set_start_method
if _typing.TYPE_CHECKING:
    # The context's ``reducer`` property gives the reduction module;
    # typeshed declares it ``str``, so checkers are told what it is, as
    # typeshed's own multiprocessing/__init__.pyi does.
    from multiprocessing import reduction as reducer
else:
    reducer = _context._default_context.reducer

# polyproc's additions: Executor is the default context's method too.
Executor = _context._default_context.Executor

# Literal lists (no ``globals()``, no concatenated variables): what type
# checkers read as the module's exports.
__all__ = [   # the stdlib's ``multiprocessing.__all__``
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
__all__ += [  # polyproc's additions
    "Executor", "WorkerLostError", "TaskTimeoutError", "InitializerError",
    "RemoteError", "RemoteTraceback", "SerializationError", "MainGuardError",
    "StdinUnavailableError", "QueueGoneError", "ManagerConnectionError",
    "ManagerProtocolError", "FrameTooLargeError", "InsecureAddressError",
    "process_cpu_count",
    "InheritedPoolError", "ClusterError", "ClusterDependencyError",
    # Monkey-patching, for unmodified programs (python -m polyproc run).
    "patch", "unpatch",
    # Instruments that watch a pool work, and the records of their events.
    "Instrument", "ChunkQueued", "ChunkDispatched", "ResultsReceived",
    "ChunkFinished", "ChunkFailed", "ChunkCancelled", "TaskRetried", "TaskTimedOut",
    "WorkerStarted", "WorkerExited", "TaskProgress",
    # A task's own progress bar (nested under its call's, in the parent).
    "progress",
]

# Public names report their public module (``polyproc.WorkerLostError``,
# not ``polyproc._exceptions.WorkerLostError``) in reprs, tracebacks and
# pickles: the classes defined in private modules (not Process, which
# keeps ``polyproc.process``, nor the stdlib's exceptions).
_fixup(__name__, {name: globals()[name] for name in __all__
                  if isinstance(globals()[name], type)
                  and globals()[name].__module__.startswith("polyproc._")})
del _fixup

SUBDEBUG = 5
SUBWARNING = 25

if "__main__" in _sys.modules:
    _sys.modules["__mp_main__"] = _sys.modules["__main__"]
