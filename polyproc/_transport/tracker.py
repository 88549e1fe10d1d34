"""The shared-memory tracker: removes segments that nobody will ever receive.

Why polyproc has its own tracker
--------------------------------
A zero-copy payload (see ``_transport/shm.py``) names POSIX shared-memory segments
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
``pp<token>_<creator pid>_``.  One tracker process per session, listening
on an abstract Unix socket derived from the token, knows every segment that
was created and not yet received, and who owns it at each moment:

    state       owner                          how it got there
    -----       -----                          ----------------
    PENDING     its sender, alone              created inside ``dumps``
    IN_FLIGHT   the carrier (pipe, queue       ``dumps`` returned the payload
                ring, socket) until a          that names it (*hand-off*)
                receiver takes it
    OPENED      the receiver (recycled         the receiver mapped it (a
                segments only)                 one-shot one is unlinked then)
    FREE        its sender, to refill          the receiver is done with it

A recycled segment keeps its state in its header (``_transport/shm_cache.py``); for a
one-shot segment the tracker keeps it: ``Register`` makes it PENDING,
``HandOff`` IN_FLIGHT, ``Unregister`` (the receiver unlinked it) forgets it.

    sender                     tracker (one per session)            receiver
    ------                     -------------------------            --------
    Register(name)  ------->   sender's names += name,
                               watch the sender's pid (pidfd)
    create + write segment
    HandOff(name)   ------->   (one-shot: now IN_FLIGHT)
    payload with name ---------------------------------------------->  open
                                                                       unlink
                               names -= name  <-------------  Unregister(name)

**A sender dies** (SIGKILL, ``os._exit``, a crash; seen at once through a
pidfd per sender process, or within ``SWEEP_S`` where pidfds do not exist).
The tracker first reads every message already sent (the dead process's last
``HandOff`` may still be queued), then, for each of its segments:
PENDING and FREE ones, and OPENED ones whose receiver died too, are
unlinked at once; IN_FLIGHT ones are left for their receiver, which may
still take them (an item in a queue, a message in a pipe), and marked
*orphaned* so that the receiver unlinks them when done; OPENED ones stay
with their living receiver.  The tracker looks at the orphans every
``SWEEP_S`` and unlinks those whose receiver died holding them or that a
carrier released.

**The session ends** when the root exits.  At a *normal* exit, as its last
multiprocessing finalizer (after the children were joined), the root sends
``EndSession`` and waits (at most ``_END_TIMEOUT_S``) for the tracker to
unlink every name it holds and exit: the program leaves nothing behind, by
the time it has exited.  The tracker does so only if no other process of
the session is connected (one started outside multiprocessing, which was not
joined); otherwise, and when the root was killed, it waits until the root
has exited (watched through a pidfd, so a reused pid cannot fool it) *and*
no process is connected any more, then unlinks what is left.  A process
connects on its first zero-copy send, or receive of a one-shot segment,
and forked children share their parent's connection, so the "exit right
after sending" pattern is safe: the root, or whoever reads, keeps the
session open.  While the session runs, an IN_FLIGHT segment that no
receiver ever takes (a consumer killed before reading) stays until the
session ends; carriers that know a payload is dead call
``serialization.release`` to free it at once.

The tracker is started on demand by whichever process of the session first
needs it (``subprocess`` with ``start_new_session``, so Ctrl-C on the
program's process group does not kill it); two processes racing to start it
is harmless: the second one cannot bind the address and exits.  If it cannot
be started at all, ``register`` raises ``OSError`` and the caller sends its
data through the pipe instead.

Messages to the tracker are typed (``Register``, ``HandOff``,
``Unregister``, ``EndSession``) and travel as one ``SOCK_SEQPACKET``
datagram each, so writes from several processes sharing one connection
never interleave.  The connection is non-blocking:
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

from .._exceptions import TrackerBusyError

__all__ = ["Register", "HandOff", "Unregister", "Drained", "EndSession",
           "session", "ShmSession", "register", "hand_off", "unregister",
           "drained", "end_session"]

SESSION_ENV = "POLYPROC_SHM_SESSION"
# After the session looks over, wait this long for a late connection (a
# spawned child that was handed a segment and has not connected yet).
GRACE_S = 0.3
# How often the tracker looks at senders it cannot watch through a pidfd,
# and at segments of dead senders still in flight, while there are any.
SWEEP_S = 1.0
_CONNECT_TIMEOUT_S = 5.0
_SEND_TIMEOUT_S = 1.0
# How long a root at exit waits for the tracker to have unlinked everything.
_END_TIMEOUT_S = 2.0


# -- Messages ---------------------------------------------------------------

class Register(NamedTuple):
    """A segment is about to be created: PENDING, its creator's alone."""
    name: str

    def encode(self) -> bytes:
        return b"R" + self.name.encode()


class HandOff(NamedTuple):
    """A one-shot segment's payload is complete: IN_FLIGHT, a carrier's now.

    *addressee*: the pid of the one receiver it goes to, or 0 (see Drained).
    """
    name: str
    addressee: int = 0

    def encode(self) -> bytes:
        return b"H" + f"{self.addressee} {self.name}".encode()


class Unregister(NamedTuple):
    """A segment was received (or released): it is gone already, forget it."""
    name: str

    def encode(self) -> bytes:
        return b"U" + self.name.encode()


class Drained(NamedTuple):
    """*reader* read everything dead process *sender* sent it (a pool's
    scheduler, its dead worker's pipe): what *sender* addressed to *reader*
    and is still in flight will never be received."""
    sender: int
    reader: int

    def encode(self) -> bytes:
        return b"D" + f"{self.sender} {self.reader}".encode()


class EndSession(NamedTuple):
    """The root exits normally: unlink every segment now, then reply."""
    pid: int

    def encode(self) -> bytes:
        return b"E" + str(self.pid).encode()


# The tracker's one-datagram replies to EndSession.
ENDED, KEPT = b"ended", b"kept"

Message = Register | HandOff | Unregister | Drained | EndSession


def decode(data: bytes) -> Message:
    """The message in one datagram; raises ``ValueError`` if it is none."""
    kind, body = data[:1], data[1:].decode()
    if kind == b"R":
        return Register(body)
    if kind == b"H":
        addressee, name = body.split(" ")
        return HandOff(name, int(addressee))
    if kind == b"U":
        return Unregister(body)
    if kind == b"D":
        sender, reader = body.split(" ")
        return Drained(int(sender), int(reader))
    if kind == b"E":
        return EndSession(int(body))
    raise ValueError(f"unknown tracker message {data!r}")


# -- The session this process belongs to ------------------------------------

class ShmSession(NamedTuple):
    """A zero-copy session: a process and all its descendants, which share
    one tracker (``POLYPROC_SHM_SESSION`` in the environment names it)."""

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
    def parse(cls, text: str) -> ShmSession:
        pid, token = text.split(":")
        if not token.isalnum() or len(token) > 16:
            raise ValueError(text)
        return cls(int(pid), token)


def _session_from_environment() -> ShmSession:
    text = os.environ.get(SESSION_ENV)
    if text:
        try:
            return ShmSession.parse(text)
        except ValueError:
            pass
    new = ShmSession(os.getpid(), os.urandom(4).hex())
    os.environ[SESSION_ENV] = new.encode()
    return new


_session = _session_from_environment()


def session() -> ShmSession:
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


def _start_tracker(sess: ShmSession) -> None:
    import subprocess
    from multiprocessing import spawn
    subprocess.Popen(
        [spawn.get_executable(), "-c",
         "from polyproc._transport.tracker_daemon import main; main()",
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
                                  "polyproc's shared-memory tracker did not start") from None
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


def _send(message: Message) -> None:
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


# True in the tracker process itself (tracker_daemon.main): what it
# unlinks needs no message, and connecting to itself would keep its own
# session open forever.
_in_tracker = False
# True once the tracker ended the session at this (root) process's exit:
# a later send goes through the pipe rather than start a new tracker.
_ended = False


def register(name: str) -> None:
    """Tell the tracker that segment *name* is about to exist (PENDING).

    Raises ``OSError`` if the tracker is unreachable or the session ended.
    """
    if _in_tracker:
        return
    if _ended:
        raise OSError(errno.ESHUTDOWN, "polyproc's shared-memory session has "
                      "ended (the program is exiting)")
    _send(Register(name))


def hand_off(name: str, addressee: int = 0) -> None:
    """Tell the tracker that one-shot segment *name* is in a carrier now.

    *addressee*: the pid of the one receiver it goes to, or 0.

    Raises ``OSError`` if the tracker is unreachable: the caller must then
    not send the payload through shared memory, since the tracker would
    unlink the segment if this process died before a receiver took it.
    """
    if not _in_tracker:
        _send(HandOff(name, addressee))


def drained(sender: int) -> None:
    """Tell the tracker that this process read all dead *sender* sent it.

    Never raises, and starts no tracker: without one there is nothing to do.
    """
    if not (_in_tracker or _ended):
        _tell_running_tracker(Drained(sender, os.getpid()))


def _tell_running_tracker(message: Message,
                          reply_timeout: float | None = None) -> bytes | None:
    """Send *message* to the tracker if one runs; none is started for it.

    Uses this process's connection, or a short-lived one.  With
    *reply_timeout*, waits that long at most for a one-datagram reply and
    returns it.  Returns None when no tracker was reached or it did not
    reply; never raises.
    """
    with _lock:
        fd = _fd if _fd is not None and _identity(_fd) == _fd_identity else None
        own = fd is None
        try:
            if fd is None:
                fd = _connect_once(_session.address)
        except OSError:
            return None
        try:
            _write_bounded(fd, message.encode())
            if reply_timeout is None:
                return b""
            return _read_reply(fd, reply_timeout)
        except OSError:
            return None
        finally:
            if own:
                os.close(fd)


def unregister(name: str) -> None:
    """Tell the tracker that segment *name* is gone; never raises.

    Names of another session (a peer reached through ``Listener``/``Client``)
    are left to that session's tracker, which tolerates names that are gone.
    """
    if _in_tracker or _ended or not name.lstrip("/").startswith(_session.prefix):
        return
    try:
        _send(Unregister(name))
    except OSError:
        pass


def end_session() -> bool:
    """At the root's normal exit: have the tracker unlink every segment now.

    Returns True when it did, False when there is no tracker, this is not
    the root, or another process of the session is still connected (the
    tracker then ends the session when that one is gone, as after a
    crash).  Blocks at most about ``_END_TIMEOUT_S``; never raises.
    Connects only to a tracker that exists: none is started for this.
    """
    global _ended
    if _in_tracker or _ended or os.getpid() != _session.root_pid:
        return False
    # No tracker: no segment of this session is tracked.
    reply = _tell_running_tracker(EndSession(os.getpid()), _END_TIMEOUT_S)
    _ended = reply == ENDED
    return _ended


def _read_reply(fd: int, timeout: float) -> bytes:
    import select
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        readable, _, _ = select.select([fd], [], [], max(0.0, left))
        if not readable:
            raise TrackerBusyError(errno.ETIMEDOUT, "polyproc's shared-memory "
                                   "tracker did not reply")
        try:
            return os.read(fd, 64)
        except BlockingIOError:
            continue


def _end_session_at_exit() -> None:
    end_session()


if _session.root_pid == os.getpid():
    from multiprocessing import util as _mp_util

    # The lowest priority of polyproc's: multiprocessing runs it after it
    # has joined the children and after every other finalizer (pools,
    # queues, managers), so nothing of the session needs a segment then.
    _mp_util.Finalize(None, _end_session_at_exit, exitpriority=-100)
