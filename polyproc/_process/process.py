"""Process objects: the stdlib's ``BaseProcess`` plus polyproc's guarantees.

Adapted from ``multiprocessing.process`` and the Process classes of
``multiprocessing.context``.  Reused unchanged: ``BaseProcess`` (the whole
life cycle: ``start``, ``join``, ``terminate``, ``kill``, ``exitcode``,
``close``, the misuse errors), ``current_process``, ``active_children``,
``parent_process``, and the stdlib's Popen classes that launch children for
each start method; they are correct and battle-tested.

Added by ``PolyProcess`` (``_process/child.py`` holds the child side):

* ``interrupt()`` (Python 3.14's: SIGINT to the child) on every Python;

* a daemon child never outlives its parent, even a parent killed by SIGKILL
  (the parent watchdog, see ``_process.child``);
* an exception raised by ``run()`` is available in the parent as
  ``p.exception`` once the child has exited;
* reading stdin in a child raises ``StdinUnavailableError`` with a message
  that says how to pass data instead;
* a script that starts processes without the ``__main__`` guard gets one
  clear message instead of a cascade of recursive errors (``MainGuardError``
  in the parent under forkserver).

The exception channel::

      parent                                         child
      ------                                         -----
      start():  reader, writer = Pipe(duplex=False)
                self._exc_writer = writer  ------->  (inherited by fork,
                super().start()                       pickled by spawn and
                writer.close(); keep reader            forkserver)
                                                     run_child(): run()
                                                       raises -> send_bytes(
      p.exception  <--  reader.recv_bytes()  <-------    exception_payload)
      (after the child exited; never blocks)           re-raise: exit code 1

The writer exists as an attribute only while ``super().start()`` runs: the
stdlib's reduction machinery transfers a Connection attribute to a spawn or
forkserver child while it pickles the process object, and fork inherits it.
The reader is set only afterwards, so it never travels to the child.
"""
from __future__ import annotations

import multiprocessing.context as _std_context
import os
import signal
import sys
import time
from functools import partial
from multiprocessing.connection import Pipe
from multiprocessing.process import (BaseProcess, active_children,
                                     current_process, parent_process)
from typing import TYPE_CHECKING, Any

# Imported here, not in the child: a forked child then finds child.py (and
# _remote_errors) already loaded; importing them in every child cost ~4 ms
# per process start under fork (see benchmarks/bench_process.py).
from .. import _public
from . import child as _child
from .fork_pause import own_threads_paused
from .._exceptions import MainGuardError
from .._transport.remote_errors import rebuild_exception

__all__ = [
    "BaseProcess", "PolyProcess", "Process", "ForkProcess", "SpawnProcess",
    "ForkServerProcess", "current_process", "active_children",
    "parent_process",
]


class PolyProcess(BaseProcess):
    """Base of polyproc's process classes (one per start method).

    Same constructor, methods and attributes as ``multiprocessing.Process``,
    plus ``exception``.
    """

    # The stdlib's private attribute and hooks that this class and its
    # subclasses use or define (typeshed leaves them out).
    _popen: Any
    if TYPE_CHECKING:
        def _check_closed(self) -> None: ...
        @staticmethod
        def _Popen(process_obj: BaseProcess) -> Any: ...
        @staticmethod
        def _after_fork() -> None: ...

    # Defaults on the class, so that __init__ stays the stdlib's.
    _exc_reader: Any = None
    _exception: BaseException | None = None
    _exception_read: bool = False

    def start(self) -> None:
        """Start the child process.

        Raises ``AssertionError`` (like the stdlib) when the process was
        already started, was created by another process, or is started by
        a daemon process; ``ValueError`` when it is closed.  In a process
        that is importing the main module (spawn, forkserver), exits with a
        message that explains the ``if __name__ == '__main__':`` guard.
        """
        if getattr(current_process(), "_inheriting", False):
            _child.refuse_start_while_importing_main()
        reader, writer = Pipe(duplex=False)
        self._exc_writer = writer
        try:
            super().start()
        except BaseException:
            reader.close()
            raise
        finally:
            del self._exc_writer
            writer.close()
        self._exc_reader = reader

    def interrupt(self) -> None:
        """Send SIGINT to the child (``Process.interrupt`` of Python 3.14,
        offered on every Python).

        ``run()`` then gets ``KeyboardInterrupt`` (unless it handles
        SIGINT), so its ``finally`` clauses run, it exits with code 1 and
        ``exception`` is the ``KeyboardInterrupt``.  Raises ``ValueError``
        if the Process object is closed, and ``AttributeError`` (as the
        stdlib) if it was never started.
        """
        self._check_closed()
        popen = self._popen
        if hasattr(popen, "interrupt"):     # 3.14's Popen
            popen.interrupt()
        else:
            popen._send_signal(signal.SIGINT)

    def _bootstrap(self, parent_sentinel: Any = None) -> int:
        # In the child.  Wrap run() on the instance, so that subclasses that
        # override run() are covered too; the stdlib does everything else.
        self.run = partial(_child.run_child, self, self.run)  # type: ignore[method-assign]
        return super()._bootstrap(parent_sentinel)  # type: ignore[misc]  # as _popen

    def join(self, timeout: float | None = None) -> None:
        """Wait until the child process terminates, or *timeout* seconds.

        Raises ``AssertionError`` (like the stdlib) when the process was
        not started or is not a child of this process.  Once the child has
        exited, its exception channel is read and closed here, so that a
        joined Process object holds no more descriptors than the stdlib's.
        """
        super().join(timeout)
        if not self._exception_read and self._popen is not None \
                and self._popen.returncode is not None:
            self._read_exception()

    @property
    def exception(self) -> BaseException | None:
        """The exception ``run()`` raised in the child, or ``None``.

        ``None`` while the child runs, when it was never started, when it
        succeeded or exited through ``SystemExit``, and when it was killed
        (by a signal, ``os._exit``) before it could say anything.  The
        original exception when it can be rebuilt here, otherwise a
        ``polyproc.RemoteError``; either way ``__cause__`` is a
        ``polyproc.RemoteTraceback`` with the child's traceback text.
        Never blocks.
        """
        if not self._exception_read and self._popen is not None \
                and self._popen.poll() is not None:
            self._read_exception()
        return self._exception

    def _read_exception(self) -> None:
        # Only called once the child has exited, so whatever it sent is
        # complete in the pipe.  Non-blocking anyway: a sibling forked while
        # this process was starting may still hold a copy of the writer.
        reader, self._exc_reader = self._exc_reader, None
        if reader is None:  # read already, or never started
            self._exception_read = True
            return
        try:
            os.set_blocking(reader.fileno(), False)
            if reader.poll(0):
                self._exception = rebuild_exception(reader.recv_bytes())
        except (EOFError, OSError):
            pass  # nothing was sent: the child succeeded or was killed
        finally:
            reader.close()
            self._exception_read = True

    def close(self) -> None:
        """Close the Process object, releasing its resources.

        Raises ``ValueError`` if the child is still running.  ``exception``
        keeps its value after ``close()``.
        """
        if self._popen is not None and self._popen.poll() is not None \
                and not self._exception_read:
            self._read_exception()
        super().close()
        if self._exc_reader is not None and self._popen is None:
            self._exc_reader.close()
            self._exc_reader = None


class Process(PolyProcess):
    """A process started with polyproc's default start method."""

    _start_method = None

    @staticmethod
    def _Popen(process_obj: BaseProcess) -> Any:
        return _default_method_class()._Popen(process_obj)

    @staticmethod
    def _after_fork() -> None:
        return _default_method_class()._after_fork()


class ForkProcess(PolyProcess):
    _start_method = "fork"

    @staticmethod
    def _Popen(process_obj: BaseProcess) -> Any:
        from multiprocessing.popen_fork import Popen
        with own_threads_paused():  # no pool's thread runs during the fork
            return Popen(process_obj)


class SpawnProcess(PolyProcess):
    _start_method = "spawn"

    @staticmethod
    def _Popen(process_obj: BaseProcess) -> Any:
        from multiprocessing.popen_spawn_posix import Popen
        return Popen(process_obj)

    @staticmethod
    def _after_fork() -> None:
        # The process was spawned: nothing was inherited, nothing to reset.
        pass


class ForkServerProcess(PolyProcess):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: BaseProcess) -> Any:
        from multiprocessing.popen_forkserver import Popen
        try:
            return Popen(process_obj)
        except (EOFError, OSError) as error:
            if _fork_server_refused_main():
                raise MainGuardError(
                    "the fork server stopped while importing the main module "
                    "(it imports it to preload it), because that module starts "
                    "processes at import time.\n"
                    + _child.main_guard_message(_main_module_path())
                ) from error
            raise


def _default_method_class() -> type[PolyProcess]:
    """The class of the default start method: the stdlib's setting, shared
    with it (see ``polyproc.context``)."""
    return _CLASS_OF_START_METHOD[_std_context._default_context.get_start_method()]


_CLASS_OF_START_METHOD: dict[str, type[PolyProcess]] = {
    "fork": ForkProcess, "spawn": SpawnProcess, "forkserver": ForkServerProcess}


def _main_module_path() -> str | None:
    return getattr(sys.modules.get("__main__"), "__file__", None)


def _fork_server_refused_main(wait_s: float = 1.0) -> bool:
    """True if the fork server exited with ``MAIN_GUARD_EXIT_CODE``.

    Reads the status without reaping (``WNOWAIT``): the stdlib's
    ``ensure_running`` reaps it and starts a new server on the next call.
    The connection to the server broke, so it is exiting; wait a bounded
    time for it to be a zombie.
    """
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid is None or not hasattr(os, "waitid"):
        return False
    deadline = time.monotonic() + wait_s
    while True:
        try:
            info = os.waitid(os.P_PID, pid,
                             os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        if info is not None:
            return (info.si_code == os.CLD_EXITED
                    and info.si_status == _child.MAIN_GUARD_EXIT_CODE)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


# Public as ``polyproc.process.X`` (reprs, pickles of Process objects sent
# to spawn and forkserver children), whichever module was imported first.
_public.fixup_module_metadata("polyproc.process", {
    name: globals()[name] for name in ("PolyProcess", "Process", "ForkProcess",
                                       "SpawnProcess", "ForkServerProcess")})
