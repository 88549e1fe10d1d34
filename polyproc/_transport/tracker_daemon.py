"""The session's shared-memory tracker process: its state and its event loop.

The protocol (who owns a segment at each moment, what happens when a
sender dies, when the session ends) is described in ``tracker.py``,
which holds the messages and the client side every process of the session
uses; this module is what runs in the tracker process, started by
``tracker._start_tracker`` as ``python -c "...; main()" <session>``.

One thread, one ``selectors`` loop over: the listening socket, one
connection per client (several processes may share one after a fork), a
pidfd for the root, and a pidfd per process that created segments still
tracked (its *lifeline*: readable once it exited).  Where pidfds do not
exist, the root and the senders are polled every ``SWEEP_S``.  Each turn of
the loop handles the events, then settles the senders that died (after
reading every message already sent: a dead process's last ``HandOff`` may
still be queued), then ``Drained`` requests, then an ``EndSession``.
"""
from __future__ import annotations

import os
import socket
import sys
import time

from . import tracker
from .tracker import (ENDED, GRACE_S, KEPT, SWEEP_S, Drained,
                           EndSession, HandOff, Message, Register, ShmSession,
                           decode)

__all__ = ["main"]


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


class _Sender:
    """The tracker's record of one process that created segments."""

    __slots__ = ("pid", "lifeline", "names", "handed_off")

    def __init__(self, pid: int):
        self.pid = pid
        # A pidfd, readable once the process has exited; None where pidfds
        # do not exist (or no descriptor was left): then polled.
        self.lifeline: int | None = None
        self.names: set[str] = set()
        # One-shot names whose payload is complete (IN_FLIGHT), with their
        # addressee (0: any receiver); the others are PENDING.  A recycled
        # segment keeps both in its header.
        self.handed_off: dict[str, int] = {}


class _Tracker:
    """The tracker's state and its event loop (``run``)."""

    def __init__(self, sess: ShmSession, listener: socket.socket):
        import selectors
        self.sess = sess
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ, "listener")
        self.root = _watch_root(self.sel, sess.root_pid)
        self.root_alive = self.root is not None
        self.clients: set[socket.socket] = set()
        self.senders: dict[int, _Sender] = {}
        self.dead: set[int] = set()      # senders seen dead, not settled yet
        # IN_FLIGHT or OPENED, their sender dead: name -> addressee of a
        # one-shot one (0 for recycled ones: theirs is in the header).
        self.orphans: dict[str, int] = {}
        self.drained: list[Drained] = []  # requests not acted on yet
        self.end_request: socket.socket | None = None
        self.last_sweep = time.monotonic()

    # -- the loop ---------------------------------------------------------
    def run(self) -> None:
        """Serve until the session is over, then unlink what is left."""
        over_since: float | None = None
        while True:
            if not self.root_alive and not self.clients:
                over_since = over_since or time.monotonic()
                if time.monotonic() - over_since >= GRACE_S:
                    break
                timeout: float | None = GRACE_S
            else:
                over_since = None
                timeout = self.sweep_timeout()
            for key, _ in self.sel.select(timeout):
                self.on_event(key)
            while self.dead or self.drained:  # settling may read more
                self.settle_dead()
                self.settle_drained()
            if self.end_request is not None and self.end_session():
                return
            if time.monotonic() - self.last_sweep >= SWEEP_S:
                self.sweep()
        self.unlink_all()

    def sweep_timeout(self) -> float | None:
        polled = (self.root == "poll" and self.root_alive) or any(
            s.lifeline is None for s in self.senders.values())
        if self.dead or self.drained:
            return 0.0  # read by end_session, which then kept the session
        if not (polled or self.orphans):
            return None  # everything is watched by descriptors: just wait
        return max(0.0, SWEEP_S - (time.monotonic() - self.last_sweep))

    def on_event(self, key) -> None:
        if key.data == "listener":
            conn, _ = self.listener.accept()
            conn.setblocking(False)  # see read_all
            self.sel.register(conn, key.events, "client")
            self.clients.add(conn)
        elif key.data == "root":
            self.root_alive = False
            self.sel.unregister(key.fileobj)
            os.close(key.fileobj)
        elif isinstance(key.data, _Sender):
            self.dead.add(key.data.pid)
        else:
            self.read_all(key.fileobj)

    # -- messages ---------------------------------------------------------
    def read_all(self, conn: socket.socket) -> None:
        """Handle every datagram waiting on *conn*; close it at EOF."""
        while True:
            try:
                data = conn.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.sel.unregister(conn)
                conn.close()
                self.clients.discard(conn)
                return
            try:
                message = decode(data)
            except (ValueError, UnicodeDecodeError):
                continue  # not from polyproc: ignore it, keep serving
            self.on_message(conn, message)

    def read_everything(self) -> None:
        # Messages a process sent before it died are in our sockets' queues
        # by the time we learn of its death: read them all before acting.
        for conn in list(self.clients):
            self.read_all(conn)

    def on_message(self, conn: socket.socket, message: Message) -> None:
        from . import shm as _shm
        if isinstance(message, EndSession):
            if message.pid == self.sess.root_pid:
                self.end_request = conn
            else:
                _reply(conn, KEPT)
            return
        if isinstance(message, Drained):
            self.drained.append(message)
            return
        pid = _shm.creator_pid(message.name)
        if pid is None:
            return  # not a name of ours
        sender = self.senders.get(pid)
        if isinstance(message, Register):
            (sender or self.watch(pid)).names.add(message.name)
        elif isinstance(message, HandOff):
            if sender is not None and message.name in sender.names:
                sender.handed_off[message.name] = message.addressee
        else:
            self.orphans.pop(message.name, None)
            if sender is not None:
                sender.names.discard(message.name)
                sender.handed_off.pop(message.name, None)
                if not sender.names and sender.pid not in self.dead:
                    self.forget(sender)  # keeps one pidfd per live owner only

    # -- senders ----------------------------------------------------------
    def watch(self, pid: int) -> _Sender:
        import selectors
        sender = self.senders[pid] = _Sender(pid)
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.dead.add(pid)  # died before we heard of it
            return sender
        except (AttributeError, OSError):
            return sender  # no pidfds here, or no descriptor left: polled
        sender.lifeline = fd
        self.sel.register(fd, selectors.EVENT_READ, sender)
        return sender

    def forget(self, sender: _Sender) -> None:
        del self.senders[sender.pid]
        if sender.lifeline is not None:
            self.sel.unregister(sender.lifeline)
            os.close(sender.lifeline)

    def settle_dead(self) -> None:
        """Deal with the segments of the senders that died (module docstring)."""
        from . import shm_cache
        self.read_everything()
        dead, self.dead = self.dead, set()
        for pid in dead:
            sender = self.senders.get(pid)
            if sender is None:
                continue
            self.forget(sender)
            for name in sender.names:
                try:
                    gone = shm_cache.settle_dead_sender(
                        name, name in sender.handed_off)
                except Exception:  # a segment must never take the tracker down
                    gone = False
                if not gone:
                    self.orphans[name] = sender.handed_off.get(name, 0)

    def settle_drained(self) -> None:
        """Unlink what dead senders addressed to readers that read them out."""
        from . import shm as _shm
        from . import shm_cache
        requests, self.drained = self.drained, []
        for request in requests:
            if request.sender not in self.senders and not self.orphans:
                continue
            # The reader saw the sender exit: settle it first if we have
            # not yet, so that its segments are orphans.
            if request.sender in self.senders:
                self.dead.add(request.sender)
                self.settle_dead()
            for name, addressed in list(self.orphans.items()):
                if _shm.creator_pid(name) != request.sender:
                    continue
                try:
                    if shm_cache.settle_drained(name, request.reader, addressed):
                        del self.orphans[name]
                except Exception:
                    pass

    def sweep(self) -> None:
        """Every ``SWEEP_S``: polled senders, polled root, orphans."""
        from . import shm_cache
        self.last_sweep = time.monotonic()
        for sender in list(self.senders.values()):
            if sender.lifeline is None and not shm_cache._alive(sender.pid):
                self.dead.add(sender.pid)
        if self.dead:
            self.settle_dead()
        for name, addressed in list(self.orphans.items()):
            try:
                if shm_cache.settle_orphan(name, addressed):
                    del self.orphans[name]
            except Exception:
                pass
        if self.root == "poll" and self.root_alive:
            try:
                os.kill(self.sess.root_pid, 0)
            except ProcessLookupError:
                self.root_alive = False
            except PermissionError:
                pass

    # -- the end ----------------------------------------------------------
    def end_session(self) -> bool:
        """The root asked to end the session: do it unless others are connected."""
        conn, self.end_request = self.end_request, None
        self.read_everything()  # connections of processes that exited close
        if conn not in self.clients:
            return False
        if self.clients - {conn}:
            _reply(conn, KEPT)
            return False
        self.unlink_all()
        _reply(conn, ENDED)
        return True

    def unlink_all(self) -> None:
        for sender in self.senders.values():
            for name in sender.names:
                _unlink(name)
        for name in self.orphans:
            _unlink(name)
        self.senders.clear()
        self.orphans.clear()


def _reply(conn: socket.socket, data: bytes) -> None:
    try:
        conn.send(data)
    except OSError:
        pass  # the root is gone or stopped reading: it has its timeout


def main() -> None:
    """Run the tracker of the session named on the command line."""
    tracker._in_tracker = True
    sess = ShmSession.parse(sys.argv[-1])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        listener.bind(sess.address)
    except OSError:
        return  # another process of the session started the tracker first
    listener.listen(64)
    try:
        _Tracker(sess, listener).run()
    finally:
        listener.close()
        if not sys.platform.startswith("linux"):
            try:
                os.unlink(sess.address)
            except OSError:
                pass
