"""The shared-memory tracker: removes segments that nobody will ever receive.

Why polyproc has its own tracker
--------------------------------
A zero-copy payload (see ``_shm.py``) names POSIX shared-memory segments
that the *receiver* unlinks as soon as it opens them.  A segment outlives
normal use only when its payload is never loaded: the consumer was killed
before reading, the queue was closed with items in it, the sender was killed
between creating the segment and sending its name, the parent was SIGKILLed.
Something outside those processes must then unlink it, or it stays in
``/dev/shm`` (RAM) until reboot.

The stdlib's ``resource_tracker`` was considered and rejected:

* A process forked *before* the stdlib tracker started gets its own tracker,
  which unlinks the process's segments when the process exits, even those
  still in flight to a reader that has not opened them yet.  "Put a big
  result on a queue and exit" is the most common pattern there is; it
  would lose data.
* A receiver in a different process tree (``Listener``/``Client``) that
  unregisters a name it did not register makes the tracker print a
  traceback, and every leaked segment is reported with a ``UserWarning``.

The rule polyproc uses instead
------------------------------
A *session* is the first process that imported polyproc (the *root*) and
every process started from it, by any start method: the root writes
``POLYPROC_SHM_SESSION=<root pid>:<token>`` into its environment, and
children inherit it.  All segment names of the session start with
``pp<token>_``.  One tracker process per session, listening on an abstract
Unix socket derived from the token, holds the set of names that were created
and not yet received:

    sender                     tracker (one per session)            receiver
    ------                     -------------------------            --------
    Register(name)  ------->   names.add(name)
    create + write segment
    payload with name ---------------------------------------------->  open
                                                                       unlink
                               names.discard(name)  <-------  Unregister(name)

The tracker unlinks every name it still holds once the session is over:
the root has exited (watched through a pidfd, so a reused pid cannot fool
it) *and* no process is connected any more.  A process connects on its first
zero-copy send or receive, and forked children share their parent's
connection, so the "exit right after sending" pattern is safe: the root, or
whoever reads, keeps the session open.  Segments of a session stay in RAM
while the session runs, so a long-running root whose consumers keep dying
holds them until it exits; carriers that know a payload is dead call
``_serialization.release`` to free it at once.

The tracker is started on demand by whichever process of the session first
needs it (``subprocess`` with ``start_new_session``, so Ctrl-C on the
program's process group does not kill it); two processes racing to start it
is harmless: the second one cannot bind the address and exits.  If it cannot
be started at all, ``register`` raises ``OSError`` and the caller sends its
data through the pipe instead.

Messages to the tracker are typed (``Register``, ``Unregister``) and travel
as one ``SOCK_SEQPACKET`` datagram each, so writes from several processes
sharing one connection never interleave.  The connection is non-blocking:
a tracker that stops reading costs a sender at most ``_SEND_TIMEOUT_S``
before it falls back to the pipe, never a hang.
"""
from __future__ import annotations

import errno
import os
import socket
import sys
import threading
import time
from typing import NamedTuple

from ._exceptions import TrackerBusyError

__all__ = ["Register", "Unregister", "session", "Session", "register",
           "unregister", "main"]

SESSION_ENV = "POLYPROC_SHM_SESSION"
# After the session looks over, wait this long for a late connection (a
# spawned child that was handed a segment and has not connected yet).
GRACE_S = 0.3
# How often the tracker looks for recycled segments of senders that died
# (see _shm_pool.sweep), while it holds any names.
SWEEP_S = 1.0
_CONNECT_TIMEOUT_S = 5.0
_SEND_TIMEOUT_S = 1.0


# -- Messages ---------------------------------------------------------------

class Register(NamedTuple):
    """A segment was created: unlink it at the end of the session unless received."""
    name: str

    def encode(self) -> bytes:
        return b"R" + self.name.encode()


class Unregister(NamedTuple):
    """A segment was received (or released): it is gone already, forget it."""
    name: str

    def encode(self) -> bytes:
        return b"U" + self.name.encode()


def decode(data: bytes) -> Register | Unregister:
    kind, name = data[:1], data[1:].decode()
    if kind == b"R":
        return Register(name)
    if kind == b"U":
        return Unregister(name)
    raise ValueError(f"unknown tracker message {data!r}")


# -- The session this process belongs to ------------------------------------

class Session(NamedTuple):
    root_pid: int
    token: str

    @property
    def prefix(self) -> str:
        """Names of this session's segments start with this (without the '/')."""
        return f"pp{self.token}_"

    @property
    def address(self) -> str | bytes:
        if sys.platform.startswith("linux"):
            # Abstract namespace: no file to clean up, gone with the socket.
            return f"\0polyproc-shm-{self.token}"
        import tempfile
        return os.path.join(tempfile.gettempdir(), f"polyproc-shm-{self.token}")

    def encode(self) -> str:
        return f"{self.root_pid}:{self.token}"

    @classmethod
    def parse(cls, text: str) -> "Session":
        pid, token = text.split(":")
        if not token.isalnum() or len(token) > 16:
            raise ValueError(text)
        return cls(int(pid), token)


def _session_from_environment() -> Session:
    text = os.environ.get(SESSION_ENV)
    if text:
        try:
            return Session.parse(text)
        except ValueError:
            pass
    new = Session(os.getpid(), os.urandom(4).hex())
    os.environ[SESSION_ENV] = new.encode()
    return new


_session = _session_from_environment()


def session() -> Session:
    return _session


# -- Client side: this process's connection to its session's tracker ---------

_lock = threading.Lock()
# The connection, as a bare file descriptor: it lives as long as the process
# (its closing is what tells the tracker the process is gone), so there is
# no socket object to close, and nothing to warn about at exit.
_fd: int | None = None
# (st_dev, st_ino) of that socket: a process that closed its inherited
# descriptors and reused the number for a file must not get our messages.
_fd_identity: tuple[int, int] | None = None


def _after_fork_in_child() -> None:
    # The child shares the parent's connection (that is what keeps the
    # session open while the child lives); only the lock must be new, since
    # another thread of the parent may have held it at the fork.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _connect_once(address) -> int:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(address)
        s.setblocking(False)  # see _write_bounded
    except BaseException:
        s.close()
        raise
    return s.detach()


def _start_tracker(sess: Session) -> None:
    import subprocess
    from multiprocessing import spawn
    subprocess.Popen(
        [spawn.get_executable(), "-c",
         "from polyproc._shm_tracker import main; main()",
         sess.encode()],
        # No inherited stdout/stderr: a caller reading our output through a
        # pipe would otherwise wait for the tracker to exit, too.
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True,
        env={**os.environ, SESSION_ENV: sess.encode()})


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _connected() -> int:
    """This process's tracker connection; starts the tracker if needed.

    Blocks at most about ``_CONNECT_TIMEOUT_S`` (only when the tracker has to
    be started); raises ``OSError`` if no tracker can be reached.
    """
    global _fd, _fd_identity
    fd = _fd
    if fd is not None and _identity(fd) == _fd_identity:
        return fd
    with _lock:
        if _fd is not None and _identity(_fd) == _fd_identity:
            return _fd
        _fd = None  # closed or reused behind our back: not ours any more
        address = _session.address
        try:
            _fd = _connect_once(address)
            _fd_identity = _identity(_fd)
            return _fd
        except (ConnectionRefusedError, FileNotFoundError):
            pass
        _start_tracker(_session)
        deadline = time.monotonic() + _CONNECT_TIMEOUT_S
        while True:
            try:
                _fd = _connect_once(address)
                _fd_identity = _identity(_fd)
                return _fd
            except (ConnectionRefusedError, FileNotFoundError):
                if time.monotonic() > deadline:
                    raise OSError(errno.ETIMEDOUT,
                                  "polyproc's shared-memory tracker did not start")
                time.sleep(0.005)


def _write_bounded(fd: int, data: bytes) -> None:
    # The connection is non-blocking: a tracker that stopped reading (a
    # SIGSTOP, a debugger) must not hang a sender.  Wait a bounded time for
    # room, then give up; the caller sends through the pipe instead.
    try:
        os.write(fd, data)  # one datagram: never interleaved with others'
        return
    except BlockingIOError:
        pass
    import select
    _, writable, _ = select.select([], [fd], [], _SEND_TIMEOUT_S)
    if not writable:
        raise TrackerBusyError(errno.ETIMEDOUT, "polyproc's shared-memory "
                               "tracker is not reading its messages")
    os.write(fd, data)


def _send(message: Register | Unregister) -> None:
    global _fd
    data = message.encode()
    for attempt in (1, 2):
        fd = _connected()
        try:
            _write_bounded(fd, data)
            return
        except (TrackerBusyError, BlockingIOError):
            raise
        except OSError:
            # The tracker died (killed by someone): connect to, or start,
            # a new one once, then give up.  (Python ignores SIGPIPE, so a
            # dead peer is an EPIPE here, not a signal.)
            with _lock:
                if _fd == fd:
                    _fd = None
                    os.close(fd)
            if attempt == 2:
                raise


# True in the tracker process itself: what it unlinks needs no message, and
# connecting to itself would keep its own session open forever.
_in_tracker = False


def register(name: str) -> None:
    """Tell the tracker that segment *name* exists; raises ``OSError`` if unreachable."""
    if not _in_tracker:
        _send(Register(name))


def unregister(name: str) -> None:
    """Tell the tracker that segment *name* is gone; never raises.

    Names of another session (a peer reached through ``Listener``/``Client``)
    are left to that session's tracker, which tolerates names that are gone.
    """
    if _in_tracker or not name.lstrip("/").startswith(_session.prefix):
        return
    try:
        _send(Unregister(name))
    except OSError:
        pass


# -- Server side: the tracker process ----------------------------------------

def _unlink(name: str) -> None:
    import _posixshmem
    try:
        _posixshmem.shm_unlink(name)
    except OSError:
        pass  # received, released or never created: nothing to do


def _watch_root(sel, root_pid: int) -> object | None:
    """Register a pidfd for the root with selector *sel*; None if the root is gone.

    Returns the pidfd, or the string "poll" where pidfds do not exist.
    """
    import selectors
    try:
        fd = os.pidfd_open(root_pid)
    except ProcessLookupError:
        return None
    except (AttributeError, OSError):
        try:
            os.kill(root_pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "poll"
    sel.register(fd, selectors.EVENT_READ, "root")
    return fd


def main() -> None:
    """Run the tracker of the session named on the command line."""
    import selectors
    global _in_tracker
    _in_tracker = True
    sess = Session.parse(sys.argv[-1])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        listener.bind(sess.address)
    except OSError:
        return  # another process of the session started the tracker first
    listener.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "listener")
    root = _watch_root(sel, sess.root_pid)
    root_alive = root is not None
    names: set[str] = set()
    clients = 0
    over_since: float | None = None
    last_sweep = time.monotonic()
    from . import _shm_pool
    while True:
        over = not root_alive and clients == 0
        if over:
            over_since = over_since or time.monotonic()
            if time.monotonic() - over_since >= GRACE_S:
                break
            timeout = GRACE_S
        else:
            over_since = None
            timeout = 0.5 if root == "poll" else None
            if names:
                timeout = min(timeout or SWEEP_S, SWEEP_S)
        for key, _ in sel.select(timeout):
            if key.data == "listener":
                conn, _ = listener.accept()
                sel.register(conn, selectors.EVENT_READ, "client")
                clients += 1
            elif key.data == "root":
                root_alive = False
                sel.unregister(key.fileobj)
                os.close(key.fileobj)
            else:
                conn = key.fileobj
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(conn)
                    conn.close()
                    clients -= 1
                    continue
                try:
                    message = decode(data)
                except (ValueError, UnicodeDecodeError):
                    continue  # not from polyproc: ignore it, keep serving
                if isinstance(message, Register):
                    names.add(message.name)
                else:
                    names.discard(message.name)
        if names and time.monotonic() - last_sweep >= SWEEP_S:
            last_sweep = time.monotonic()
            try:
                names.difference_update(_shm_pool.sweep(list(names)))
            except Exception:  # a sweep must never take the tracker down
                pass
        if root == "poll" and root_alive:
            try:
                os.kill(sess.root_pid, 0)
            except ProcessLookupError:
                root_alive = False
            except PermissionError:
                pass
    listener.close()
    if not sys.platform.startswith("linux"):
        try:
            os.unlink(sess.address)
        except OSError:
            pass
    for name in names:
        _unlink(name)


if __name__ == "__main__":
    main()
