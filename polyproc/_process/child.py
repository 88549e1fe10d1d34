"""The child side of ``PolyProcess``: what runs around ``run()`` in the child.

The stdlib's ``BaseProcess._bootstrap`` does the real work of a child's
life (reset the inherited state, call ``run()``, turn the outcome into an
exit code, flush the streams) and is reused as it is.  ``PolyProcess``
only replaces ``self.run`` on the instance, in the child, by
``run_child(process, run)`` from this module, which:

1. replaces ``sys.stdin`` (the stdlib already made it ``/dev/null``) by
   ``NoStdin``, whose read methods raise ``StdinUnavailableError`` with a
   message that says how to pass data instead: an ``input()`` in a child
   otherwise fails with a bare ``EOFError: EOF when reading a line``;
2. for a daemon process, starts the *parent watchdog* (below);
3. calls the real ``run``; if it raises anything but ``SystemExit``, sends
   the exception (see ``_transport.remote_errors``) to the parent over the exception
   channel, a one-way pipe made by ``PolyProcess.start()``, then re-raises
   so the stdlib prints it and exits with code 1 as usual.

Wrapping on the instance (rather than overriding ``run`` in the class)
keeps working for user subclasses that override ``run()``.

The parent watchdog
-------------------
The stdlib terminates daemon children from an ``atexit`` hook, so a parent
that is SIGKILLed (or OOM-killed, or calls ``os._exit``) leaves them
running forever.  The watchdog is a daemon thread in each daemon child
that blocks on the *parent sentinel* (the stdlib gives every child the read
end of a pipe whose write end only the parent holds: it turns readable, at
EOF, when the parent is gone), waking every 0.1 s to also compare
``os.getppid()`` with its value at start.  Both are needed:

* under fork, a sibling forked later inherits the parent's end of our
  sentinel pipe, so the sentinel alone may never report EOF;
* under forkserver, our OS parent is the fork server, which exits when its
  client (our parent) dies: ``getppid`` changes then, and the sentinel (a
  duplicate of the data pipe's write end kept by the client) reports EOF.

When the parent is gone the watchdog sends SIGTERM to its own process (the
default action ends it at once; a user handler gets a chance to clean up)
and, if the process is still there 0.3 s later, ends it with ``os._exit``.
It never flushes or takes locks first: the main thread may hold the lock of
``sys.stdout``, and the watchdog must not wait on anything.
"""
from __future__ import annotations

import io
import os
import signal
import sys
import time
from types import FrameType
from typing import Any, Callable, NoReturn

from .._exceptions import StdinUnavailableError
from .._transport.remote_errors import DEFAULT_LIMIT, exception_payload

__all__ = ["NoStdin", "run_child", "install_stdin_guard",
           "start_parent_watchdog", "send_exception",
           "refuse_start_while_importing_main", "MAIN_GUARD_EXIT_CODE",
           "WATCHDOG_INTERVAL"]

WATCHDOG_INTERVAL = 0.1
_TERM_GRACE = 0.3

# The fork server's exit status when it stopped because the main module
# starts processes at import time (sysexits.h: EX_CONFIG).  The parent reads
# it, without reaping, to raise MainGuardError instead of an EOFError.
MAIN_GUARD_EXIT_CODE = 78


# --- standard input -------------------------------------------------------

def _stdin_message() -> str:
    from multiprocessing.process import current_process
    return (
        f"process {current_process().name!r} tried to read standard input, "
        "but child processes have no standard input (stdin is closed in "
        "processes started by polyproc/multiprocessing); pass the data as "
        "an argument (args=...), through a Queue or a Pipe"
    )


class _NoStdinBinary(io.RawIOBase):
    """``sys.stdin.buffer`` of a child: reads raise, the rest is /dev/null."""

    def __init__(self, devnull: Any):
        super().__init__()
        self._devnull = devnull

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise StdinUnavailableError(_stdin_message())

    def read(self, size: int = -1) -> bytes:
        raise StdinUnavailableError(_stdin_message())

    def readall(self) -> bytes:
        raise StdinUnavailableError(_stdin_message())

    def readline(self, size: int | None = -1) -> bytes:
        raise StdinUnavailableError(_stdin_message())

    def fileno(self) -> int:
        return self._devnull.fileno()

    def isatty(self) -> bool:
        return False


class NoStdin(io.TextIOBase):
    """``sys.stdin`` of a child started by polyproc.

    Reading (``read``, ``readline``, ``readlines``, iteration, and so
    ``input()``) raises ``StdinUnavailableError``, an ``EOFError``.
    Everything else behaves like the stdlib child's stdin, an open
    ``/dev/null``: ``fileno()`` is a real descriptor, ``isatty()`` is
    False, ``close()`` and ``closed`` work.
    """

    def __init__(self, devnull: Any):
        super().__init__()
        self._devnull = devnull
        self._buffer = _NoStdinBinary(devnull)

    # reading: the point of this class
    def read(self, size: int | None = -1) -> str:
        raise StdinUnavailableError(_stdin_message())

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        raise StdinUnavailableError(_stdin_message())

    def readlines(self, hint: int = -1) -> list[str]:  # type: ignore[override]
        raise StdinUnavailableError(_stdin_message())

    # typeshed's IOBase iterates bytes; a text stream, as this one, str.
    def __iter__(self) -> NoStdin:  # type: ignore[override]
        return self

    def __next__(self) -> str:  # type: ignore[override]
        raise StdinUnavailableError(_stdin_message())

    # the rest: like the /dev/null file the stdlib installs
    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._devnull.fileno()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        self._devnull.close()

    @property
    def closed(self) -> bool:
        return self._devnull.closed

    @property
    def buffer(self) -> _NoStdinBinary:
        return self._buffer

    @property
    def name(self) -> Any:
        return getattr(self._devnull, "name", os.devnull)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._devnull, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._devnull, "errors", "strict")

    @property
    def mode(self) -> str:
        return "r"


def install_stdin_guard() -> None:
    """Replace ``sys.stdin`` by a ``NoStdin`` over the current /dev/null one."""
    current = sys.stdin
    if isinstance(current, NoStdin):
        return
    if current is None or getattr(current, "closed", True):
        current = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - becomes sys.stdin
    sys.stdin = NoStdin(current)


# --- the parent watchdog --------------------------------------------------

def _parent_sentinel() -> int | None:
    from multiprocessing.process import parent_process
    parent = parent_process()
    sentinel = getattr(parent, "_sentinel", None) if parent is not None else None
    return sentinel if isinstance(sentinel, int) else None


def _fd_identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class _ParentWatch:
    """The two checks of the watchdog, and the trust it puts in the sentinel.

    User code may close the sentinel descriptor (``os.closerange``...) and
    the number may then be reused by a file that is always readable.  The
    sentinel is trusted only while its descriptor is still the same pipe
    (device and inode as at start); otherwise only ``getppid`` is used.
    """

    def __init__(self, sentinel: int | None, ppid: int):
        self.ppid = ppid
        self.identity = _fd_identity(sentinel) if sentinel is not None else None
        self.sentinel = sentinel if self.identity is not None else None

    def _sentinel_says_gone(self, sentinel: int, timeout: float) -> bool:
        from multiprocessing.connection import wait
        try:
            ready = bool(wait([sentinel], timeout))
        except (OSError, ValueError):
            ready = True  # closed under us: the identity check decides
        if not ready:
            return False
        if _fd_identity(sentinel) == self.identity:
            return True  # EOF: the parent, the only writer, is gone
        self.sentinel = None
        return False

    def parent_is_gone(self, timeout: float) -> bool:
        """Block up to *timeout* s; True as soon as the parent is known gone."""
        if self.sentinel is None:
            time.sleep(timeout)
        elif self._sentinel_says_gone(self.sentinel, timeout):
            return True
        return os.getppid() != self.ppid


def _end_this_process() -> NoReturn:
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(_TERM_GRACE)
    finally:
        os._exit(1)


def _watch_parent(watch: _ParentWatch, interval: float) -> None:
    while not watch.parent_is_gone(interval):
        pass
    _end_this_process()


def start_parent_watchdog(interval: float = WATCHDOG_INTERVAL) -> None:
    """Start the thread that ends this process when its parent is gone.

    A bare ``_thread`` thread: ``threading.Thread.start()`` waits until the
    new thread runs, which cost half a millisecond per daemon start on a
    busy machine; nothing here needs that handshake.  Bare threads are not
    joined at exit, like daemon threads.  The sentinel's identity is taken
    here, before ``run()`` starts, not in the thread: by the time the thread
    runs, ``run()`` may already have closed and reused the descriptor.
    """
    import _thread
    watch = _ParentWatch(_parent_sentinel(), os.getppid())
    _thread.start_new_thread(_watch_parent, (watch, interval))


# --- the exception channel -------------------------------------------------

def _pipe_capacity(fd: int) -> int:
    """Bytes the pipe *fd* holds without a reader (Linux: F_GETPIPE_SZ)."""
    try:
        import fcntl
        return fcntl.fcntl(fd, getattr(fcntl, "F_GETPIPE_SZ", 1032))
    except (OSError, ImportError, ValueError):
        return 4096  # POSIX PIPE_BUF: the least any pipe holds


def send_exception(writer: Any, exc: BaseException) -> None:
    """Send *exc* over the exception channel without ever blocking.

    The payload is capped below the pipe's capacity (the 4-byte length
    header of ``send_bytes`` included), so the write completes although
    the parent reads only after this process has exited.
    """
    try:
        limit = min(DEFAULT_LIMIT, _pipe_capacity(writer.fileno()) - 64)
        writer.send_bytes(exception_payload(exc, limit=limit))
    except Exception:
        pass  # the parent is gone or the pipe was closed: nothing to tell


def run_child(process: Any, run: Callable[[], None]) -> None:
    """Run ``run()`` in the child as described in the module docstring."""
    writer = process.__dict__.pop("_exc_writer", None)
    install_stdin_guard()
    if process.daemon:
        start_parent_watchdog()
    try:
        run()
    except SystemExit:
        raise
    except BaseException as exc:
        if writer is not None:
            send_exception(writer, exc)
        raise
    finally:
        if writer is not None:
            writer.close()


# --- the __main__ guard ---------------------------------------------------

def _in_fork_server_preload() -> bool:
    """True in the fork server while it imports ``__main__`` to preload it.

    Told apart from a child of the fork server (which imports ``__main__``
    too, inside ``_serve_one``) by the frames on the stack.  Python 3.11's
    fork server never preloads ``__main__`` (it looks up the wrong key in
    the preparation data); later versions do.
    """
    forkserver = sys.modules.get("multiprocessing.forkserver")
    if forkserver is None:
        return False
    in_main = False
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is forkserver._serve_one.__code__:
            return False
        if frame.f_code is forkserver.main.__code__:
            in_main = True
        frame = frame.f_back
    return in_main


def _main_path_being_imported() -> str | None:
    # The frame running the main module's code (named __mp_main__ by the
    # stdlib's spawn.prepare).  Not sys.modules["__mp_main__"]: importing
    # multiprocessing or polyproc during that import rebinds it.
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "__mp_main__":
            return frame.f_globals.get("__file__")
        frame = frame.f_back
    return None


def main_guard_message(main_path: str | None = None,
                       what: str = "a process was started") -> str:
    """What to tell a script that starts processes at import time.

    *what* names the call that was made at import time.
    """
    if main_path is None:
        main_path = _main_path_being_imported()
    where = f" ({main_path})" if main_path else ""
    text = (
        f"polyproc: {what} while the main module"
        f"{where} was being imported by a new process.\n"
        "Under the 'spawn' and 'forkserver' start methods each new process "
        "imports the main module again, so code at its top level runs again "
        "there; starting processes at the top level would start them "
        "recursively.\n"
        "Fix: start processes (and call set_start_method) only from code "
        "under the main guard:\n\n"
        "    if __name__ == '__main__':\n"
        "        main()   # the code that starts processes or pools\n"
    )
    if getattr(sys, "frozen", False):
        text += ("\nIn a frozen executable, call multiprocessing.freeze_support() "
                 "first in that block.\n")
    return text


def refuse_start_while_importing_main(what: str = "a process was started") -> NoReturn:
    """Called by ``start()`` in a process that is importing ``__main__``.

    (Also by ``Pool()``, and by ``set_start_method()`` where the stdlib
    would raise "context has already been set"; *what* names the call.)

    In a child (spawn, or forked by the fork server): writes the message to
    stderr and exits with code 1, without a traceback.  (Not
    ``SystemExit(message)``: a child of the fork server leaves through
    ``os._exit``, which would drop the message.)  In the fork server while
    it preloads the main module: a silent exit with
    ``MAIN_GUARD_EXIT_CODE``; the parent sees it and raises
    ``MainGuardError`` with the same message, so the user reads it once.
    """
    if _in_fork_server_preload():
        raise SystemExit(MAIN_GUARD_EXIT_CODE)
    try:
        sys.stderr.write(main_guard_message(what=what))
        sys.stderr.flush()
    except Exception:
        pass
    raise SystemExit(1)
