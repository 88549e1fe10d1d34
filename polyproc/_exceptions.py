"""Every exception polyproc raises, in one place.

The stdlib's own types (``ProcessError``, ``TimeoutError``, ...) are re-used
as they are, so that ``except multiprocessing.TimeoutError`` keeps catching
what polyproc raises.  polyproc's additions subclass the stdlib type that
stdlib code would already catch for the same situation: a lost worker is a
``ProcessError``, a task that ran too long is a ``TimeoutError``.

Messages name what happened, the likely cause and what to do about it.
"""
from __future__ import annotations

import pickle
import sys
from typing import TYPE_CHECKING
from multiprocessing import (AuthenticationError, BufferTooShort,
                             ProcessError, TimeoutError)

__all__ = [
    "ProcessError", "BufferTooShort", "TimeoutError", "AuthenticationError",
    "WorkerLostError", "TaskTimeoutError", "InitializerError",
    "RemoteError", "RemoteTraceback", "SerializationError",
    "SerializationTypeError", "SerializationPicklingError",
    "SerializationAttributeError", "UnloadableError", "pickling_error",
    "add_note", "MainGuardError", "StdinUnavailableError",
    "QueueGoneError", "InheritedPoolError", "ClusterDependencyError",
    "ClusterError",
]


class WorkerLostError(ProcessError):
    """The worker process running a task died before the task finished.

    Raised for that task only: the pool replaces the worker and goes on.
    ``pid``, ``exitcode`` (negative signal number when killed by a signal)
    and ``task`` (a short description of the call) say what was lost.
    """

    def __init__(self, message: str, pid: int | None = None,
                 exitcode: int | None = None, task: str | None = None):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.task = task

    def __reduce__(self):
        return (type(self), (self.args[0], self.pid, self.exitcode, self.task))


class TaskTimeoutError(TimeoutError):
    """A task ran longer than its ``timeout=``; its worker was killed and replaced."""

    def __init__(self, message: str, timeout: float | None = None,
                 task: str | None = None):
        super().__init__(message)
        self.timeout = timeout
        self.task = task

    def __reduce__(self):
        return (type(self), (self.args[0], self.timeout, self.task))


class InitializerError(ProcessError):
    """A pool's ``initializer`` raised, so the pool cannot run tasks.

    The original exception is ``__cause__``.  The pool does not respawn
    workers in a loop (the stdlib does): every pending and later task fails
    with this error until the pool is closed.
    """


class SerializationError(ProcessError, ValueError):
    """An object could not be pickled (or unpickled) to cross a process boundary.

    Subclasses ``ValueError`` too: a pickling failure is a value problem of
    the object passed, not of the pool.  What is raised when an object
    cannot be *pickled* is decided by ``pickling_error``: code written for
    the stdlib must catch it as the type pickle raised.
    """


# The stdlib raises whatever pickle raised when an object cannot be pickled
# (``TypeError: cannot pickle '_thread.lock' object``, ``PicklingError``,
# ``AttributeError: Can't pickle local object``).  polyproc keeps that type
# and its own message (which object, which task, what to do) through these
# subclasses, one per type pickle itself raises.  An exception of any other
# type comes from the object's own code (a ``__reduce__`` or
# ``__getstate__`` that raises): that very exception is raised, with
# polyproc's message as a note.  Rejected: a class made on the fly from
# SerializationError and the original type (not importable, so it cannot
# cross a process boundary; fails for types that cannot be subclassed or
# mixed; hides the original class from ``type(e) is``).

class SerializationTypeError(SerializationError, TypeError):
    """Pickle raised ``TypeError`` (``cannot pickle '_thread.lock' object``).

    ``__cause__`` is pickle's own exception.
    """


class SerializationPicklingError(SerializationError, pickle.PicklingError):
    """Pickle raised ``pickle.PicklingError``; ``__cause__`` is pickle's exception."""


class SerializationAttributeError(SerializationError, AttributeError):
    """Pickle raised ``AttributeError`` (``Can't pickle local object``);
    ``__cause__`` is pickle's exception."""


_SERIALIZATION_ERROR_FOR: dict[type, type[SerializationError]] = {
    TypeError: SerializationTypeError,
    pickle.PicklingError: SerializationPicklingError,
    AttributeError: SerializationAttributeError,
}


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; on Python 3.10, which has no notes, the same
    ``__notes__`` list, and the note chained as ``__cause__`` when *exc*
    has no cause or context (so that a printed traceback shows it)."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:  # (an else, so that type checkers of 3.11+ skip it)
        try:
            notes = exc.__notes__  # type: ignore[attr-defined]
        except AttributeError:
            notes = exc.__notes__ = []  # type: ignore[attr-defined]
        notes.append(note)
        if exc.__cause__ is None and exc.__context__ is None:
            exc.__cause__ = SerializationError(note)


def pickling_error(message: str, original: BaseException) -> BaseException:
    """The exception to raise when pickling an object raised *original*.

    Catchable as the type of *original*, as the stdlib's is: a
    ``SerializationError`` subclass with *message* for the types pickle
    itself raises (see above), else *original* itself with *message* as a
    note.
    """
    cls = _SERIALIZATION_ERROR_FOR.get(type(original))
    if cls is None:
        add_note(original, message)
        return original
    error = cls(message)
    error.__cause__ = original
    return error


class UnloadableError(SerializationError):
    """A task's arguments could not be unpickled in its worker, or its
    result in the parent (a class that only exists on one side, a
    reconstructor that raises).  Only that task fails; the pool goes on.
    The Executor raises it as ``ExecutorUnloadableError``, which is also
    the stdlib's ``BrokenProcessPool``.
    """


class RemoteTraceback(Exception):
    """Carries the text of a traceback from another process.

    Attached as ``__cause__`` of an exception re-raised in the parent, so the
    printed traceback shows where the error happened in the worker.
    """

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class RemoteError(Exception):
    """An exception from another process that could not be rebuilt here.

    Happens when the original exception cannot be pickled or unpickled (a
    custom ``__init__`` signature, unpicklable attributes, a class that only
    exists in the worker).  ``type_name``, ``message`` and
    ``remote_traceback`` keep everything that was known about it.
    """

    def __init__(self, type_name: str, message: str,
                 remote_traceback: str = ""):
        super().__init__(type_name, message, remote_traceback)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


class MainGuardError(RuntimeError):
    """A child process tried to start processes while importing ``__main__``.

    Under the spawn and forkserver start methods every child imports the
    main script again.  Code that starts processes at module level, without
    ``if __name__ == '__main__':``, would then start processes recursively.
    """


class StdinUnavailableError(EOFError):
    """A child process tried to read standard input, which it does not have.

    Subclasses ``EOFError`` because that is what the stdlib child raises
    (its stdin is ``/dev/null``), so existing ``except EOFError`` code keeps
    working.
    """


class InheritedPoolError(ProcessError, RuntimeError):
    """A Pool or Executor (or one of its results) was used in a forked child.

    ``os.fork()`` (or a ``Process`` under the fork start method) copies the
    pool object into the child, but not its scheduler thread, and its
    workers remain the parent's: nothing in the child would ever run the
    call, so it raises at once instead of hanging.  Subclasses
    ``RuntimeError`` because using an object outside the process (or
    thread, or event loop) that owns it is one, and it is what code
    written for ``concurrent.futures`` catches for an executor that cannot
    take work (``BrokenExecutor``, "cannot schedule new futures").
    """


# --- queues (polyproc.queues) ----------------------------------------------

class QueueGoneError(ProcessError, FileNotFoundError):
    """A queue was unpickled after its shared memory was removed.

    The process that creates a queue owns its shared memory and removes it
    when the queue object is garbage-collected there or that process exits.
    Subclasses ``FileNotFoundError`` because that is what it is underneath.
    """


# --- pool (polyproc.pool) ---------------------------------------------------
# The stdlib's Pool raises ``multiprocessing.pool.MaybeEncodingError`` for a
# result that cannot be pickled; polyproc's error is also one.  Built on
# first use, as the Executor's below: importing multiprocessing.pool costs
# about 2 ms, and a worker only needs it when a result fails.

__all__ += ["UnpicklableResultError"]

if TYPE_CHECKING:
    # What _make_pool_exceptions builds, as type checkers see it (it is also
    # a multiprocessing.pool.MaybeEncodingError, which typeshed lacks).
    class UnpicklableResultError(SerializationError):
        exc: str
        value: str
        reason: BaseException | None

        def __init__(self, message: str, exc: str = "", value: str = "",
                     reason: BaseException | None = None) -> None: ...


def _make_pool_exceptions() -> None:
    from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]

    class UnpicklableResultError(SerializationError, MaybeEncodingError):
        """A task's result could not be pickled to go back to the parent.

        Only that task fails.  A ``multiprocessing.pool.MaybeEncodingError``,
        as the stdlib's Pool raises, with its ``exc`` and ``value``
        attributes (the reprs of the pickling error and of the result).
        ``reason`` is the pickling error itself (None if it could not
        cross): the Executor raises that, as ``ProcessPoolExecutor`` does.
        """

        def __init__(self, message: str, exc: str = "", value: str = "",
                     reason: BaseException | None = None):
            Exception.__init__(self, message)
            self.exc = exc
            self.value = value
            self.reason = reason

        def __str__(self) -> str:
            return str(self.args[0]) if self.args else ""

        def __reduce__(self):
            return (type(self), (str(self), self.exc, self.value, self.reason))

    _publish(UnpicklableResultError)


# --- executor (polyproc.executor) ------------------------------------------
# stdlib code written for ProcessPoolExecutor catches BrokenProcessPool when
# a worker dies, the initializer fails, or a task or its result cannot be
# unpickled.  polyproc's Executor fails only the future concerned, but with
# an exception that is *also* a BrokenProcessPool, so that ``except
# BrokenProcessPool`` keeps working.
#
# Built on first use (module __getattr__): importing concurrent.futures.process
# costs about 10 ms, which every spawned worker would pay at start-up.

__all__ += ["ExecutorWorkerLostError", "ExecutorInitializerError",
            "ExecutorUnloadableError"]

if TYPE_CHECKING:
    # The classes _make_executor_exceptions builds, as type checkers see
    # them (module __getattr__ would make them Any).
    from concurrent.futures.process import BrokenProcessPool

    class ExecutorWorkerLostError(WorkerLostError, BrokenProcessPool): ...
    class ExecutorInitializerError(InitializerError, BrokenProcessPool): ...
    class ExecutorUnloadableError(UnloadableError, BrokenProcessPool): ...


def _make_executor_exceptions() -> None:
    from concurrent.futures.process import BrokenProcessPool

    class ExecutorWorkerLostError(WorkerLostError, BrokenProcessPool):
        """``WorkerLostError`` as an Executor's future raises it.

        Only the future of the task that was running in the dead worker gets
        it (the stdlib fails every pending future with ``BrokenProcessPool``);
        the executor replaces the worker and goes on.
        """

    class ExecutorInitializerError(InitializerError, BrokenProcessPool):
        """The Executor's ``initializer`` raised: it cannot run tasks.

        Every pending and later future fails with it, and ``submit`` raises it,
        as the stdlib's ``BrokenProcessPool`` does.  The original exception is
        ``__cause__``.
        """

    class ExecutorUnloadableError(UnloadableError, BrokenProcessPool):
        """``UnloadableError`` as an Executor's future raises it.

        The stdlib breaks the whole executor when a task cannot be unpickled
        in its worker or a result in the parent; polyproc fails only that
        future, with an exception that is also a ``BrokenProcessPool``.
        """

    for cls in (ExecutorWorkerLostError, ExecutorInitializerError,
                ExecutorUnloadableError):
        _publish(cls)


def _publish(cls: type) -> None:
    # Pickles name the class as this module's attribute, which __getattr__
    # builds in a process that has not used it yet.
    cls.__module__ = __name__
    cls.__qualname__ = cls.__name__
    globals()[cls.__name__] = cls


_LAZY = {
    "UnpicklableResultError": _make_pool_exceptions,
    "ExecutorWorkerLostError": _make_executor_exceptions,
    "ExecutorInitializerError": _make_executor_exceptions,
    "ExecutorUnloadableError": _make_executor_exceptions,
}


def __getattr__(name: str):
    make = _LAZY.get(name)
    if make is not None:
        make()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- managers (polyproc.managers) -----------------------------------------

__all__ += ["ManagerConnectionError", "ManagerProtocolError",
            "FrameTooLargeError", "ManagerClientGone", "InsecureAddressError"]


class ManagerConnectionError(ProcessError, ConnectionError, EOFError):
    """The manager server cannot be reached, or died during a call.

    Subclasses ``ConnectionError`` and ``EOFError`` because those are what
    the stdlib's proxies raise when their server is gone, so existing
    ``except`` clauses keep working.  ``address`` names the manager.
    """

    def __init__(self, message: str, address: object = None):
        super().__init__(message)
        self.address = address

    def __reduce__(self):
        return (type(self), (self.args[0], self.address))


class ManagerProtocolError(ProcessError):
    """A peer sent bytes that are not a valid manager frame (garbage, a
    truncated frame, a frame that took too long to arrive)."""


class FrameTooLargeError(ManagerProtocolError, ValueError):
    """A manager message is larger than ``max_frame_size`` allows.

    The limit protects the server from a length header that claims more
    memory than it should ever allocate; raise it (``max_frame_size=`` of
    the manager) or send the data in smaller pieces.
    """


class ManagerClientGone(ManagerConnectionError):
    """Server side only: the client a blocking call waited for has gone
    (its connection closed), so the call gives up instead of taking an item
    or a lock on behalf of a dead process."""


class InsecureAddressError(ValueError):
    """A manager was asked to listen on a non-loopback address without an
    explicit ``authkey``.

    The default key is the process's own ``authkey``, which other machines
    neither know nor should; a server reachable from the network must be
    given its key on purpose.
    """


# --- the cluster backend (polyproc._pool._backends.dask) -------------------------

class ClusterDependencyError(ImportError):
    """``cluster=`` was given, but Dask distributed (the optional extra
    ``polyproc[dask]``) cannot be imported here."""


class ClusterError(ProcessError):
    """The Dask cluster behind a ``Pool(cluster=...)`` failed: its scheduler
    cannot be reached or went away, or its workers cannot run polyproc's
    tasks (another version of polyproc or Dask, a task module they cannot
    import).  The message names the scheduler's address and what to do."""

    def __init__(self, message: str, address: str | None = None):
        super().__init__(message)
        self.address = address

    def __reduce__(self):
        return (type(self), (self.args[0], self.address))


# --- zero-copy transport (polyproc._transport: shm, shm_cache, tracker) --------
# Internal: callers never see these raised.  They make ``_transport.serialization``
# fall back to the pipe, or appear as the ``__cause__`` of the
# ``SerializationError`` that ``loads`` raises.

class SegmentGoneError(FileNotFoundError):
    """A payload's shared-memory segment no longer exists, or was refilled:
    the payload was loaded or released before (a payload loads exactly
    once), or its session's tracker removed it after the session ended."""


class TrackerBusyError(OSError):
    """The shared-memory tracker has not read its messages for a while (it
    was stopped, or is swamped); the sender uses the pipe instead."""


class LargeBufferSignal(Exception):
    """Control flow inside ``serialization.dumps``, never raised out of it:
    its fast path's ``buffer_callback`` raises this on the first buffer
    large enough for shared memory, and ``dumps`` takes the zero-copy path."""
