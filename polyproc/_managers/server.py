"""The manager server: keeps the shared objects and runs the calls on them.

::

    client process                          server process
    ---------------                         ----------------------------------
    proxy._callmethod ──Call──▶ Channel ──▶ _serve_connection thread (one per
                      ◀──Ok/NewProxy/Failed──   connection) ──▶ Server._call
                      (a FastChannel on one machine: the frames go through
                       a shared segment, see fastpath.py)
    lifeline Channel ────────── (idle) ───▶ _serve_connection: on EOF drop the
                                            session's references
    manager.shutdown ── control pipe ─────▶ _watch_control (in _managers/manager.py)

Threads, as in the stdlib's ``Server``: the accept loop runs in a daemon
thread, each authenticated connection gets its own thread, and the main
thread waits for ``stop_event``.  One thread per connection is what lets a
call block in the server (``Queue.get``, ``Lock.acquire``,
``Barrier.wait``) without blocking anyone else; a selector loop could not
run those calls at all.

What the server protects itself against (every case is in
tests/test_managers_security.py):

* a peer that connects and never speaks, or stalls mid-handshake: dropped
  after ``handshake_timeout``;
* a wrong key: ``AuthenticationError`` logged, the connection closed, the
  others untouched;
* a flood of unauthenticated connections: at most ``max_pending`` are in
  the handshake at once, the others are closed on accept;
* garbage, a length header of 2**62, a half-sent frame: the connection is
  closed (``Channel`` never allocates more than what arrived);
* a request that cannot be unpickled, a result that cannot be pickled: a
  ``Failed`` reply, the connection goes on.

References: every object has a reference count, and every count is
attributed to a *session* (one client process).  When a session's lifeline
connection closes (the process exited, or was SIGKILLed in the middle of a
call), its references are dropped, so a dead client never leaks objects.
Locks are different: a process that exits normally says ``Goodbye`` on its
lifeline first and keeps the locks it holds (as in the stdlib, another
process may release them); one whose lifeline closes without it crashed,
and its locks are released (``_settle_locks_of_closed``).
An object whose count reaches zero is freed ``RELEASE_GRACE`` seconds later
unless a reference comes back meanwhile (see there).

Reused from the stdlib: the registry format of ``BaseManager.register``
(``typeid -> (callable, exposed, method_to_typeid, proxytype)``),
``multiprocessing.managers.public_methods`` and ``Token``.
"""
from __future__ import annotations

import functools
import itertools
import os
import pickle
import select
import socket
import sys
import threading
import time
import traceback
import weakref
from collections import Counter
from multiprocessing import util
# public_methods: the stdlib's, not in typeshed.
from multiprocessing.managers import Token, public_methods  # type: ignore[attr-defined]
from multiprocessing.process import current_process
from typing import Any, NamedTuple, TYPE_CHECKING

if TYPE_CHECKING:          # ssl is imported only by those who use TLS
    import ssl

from .._exceptions import (FrameTooLargeError, ManagerClientGone,
                          ManagerProtocolError, SerializationError)
from .wire import (DEFAULT_FRAME_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT,
                            DEFAULT_MAX_FRAME_SIZE, Address, Call, Channel,
                            Control, Create, DecRef, Failed, FailedText,
                            Goodbye, Hello, IncRef, NewProxy, Ok, set_keepalive,
                            check_serializer, decode, default_address, listen,
                            server_handshake, xmlrpc_marshal)
from .._transport.serialization import release
from . import fastpath

__all__ = ["Server", "ClientGone", "current_connection", "ConnectionState"]

ClientGone = ManagerClientGone

_SERVER_SESSION = b"<server>"     # references held by proxies inside the server

# Seconds an object whose last reference was released is kept before it is
# freed.  A proxy can be on its way to another process when its sender drops
# it: inherited by a fork child that takes its reference on first use, or
# pickled into a Process or a Pool task (``Process.start`` drops its args at
# once).  The stdlib loses that race rarely, because its releases are slow
# (a new connection each); polyproc's are one-way frames and would lose it
# every time.  Within the grace period an IncRef brings the object back.
RELEASE_GRACE = 10.0

# Seconds between checks, by the thread of a closed connection whose client
# still holds locks, that another client has released them meanwhile.
_HELD_POLL = 1.0


class ClientSession(Counter):
    """One client process's session with the server: the references it
    holds, ``ident -> count``.

    ``released`` once the process's lifeline closed and its references were
    dropped; requests still queued on its call connections then count
    nothing (see ``Server._release_session``).  ``leaving`` once its
    lifeline said ``Goodbye`` (the process exits normally); ``ended`` is
    set when the lifeline closed, with ``crashed`` true if it closed
    without a ``Goodbye``.
    """

    released = False
    leaving = False
    crashed = False

    def __init__(self) -> None:
        super().__init__()
        self.ended = threading.Event()


class ConnectionState:
    """What the server knows about the connection a call came from.

    ``undo``: callbacks run (newest first) when the reply of the current
    call cannot be delivered; ``cleanups``: run when the connection has
    closed and its client's process crashed (``Server._settle_locks_of_closed``).
    Server-side types use them (``_managers.server_types``) so that a dead client
    neither loses a queue item nor keeps a lock.
    """

    __slots__ = ("chan", "undo", "cleanups")

    def __init__(self, chan: Channel):
        self.chan = chan
        self.undo: list = []
        self.cleanups: dict = {}

    def peer_alive(self) -> bool:
        """False once the client has closed its end (EOF or reset)."""
        sock = self.chan.sock
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return True
            # Peek through a duplicate of the raw descriptor: works under
            # TLS too, and consumes nothing.
            with socket.socket(sock.family, sock.type,
                               fileno=os.dup(sock.fileno())) as raw:
                return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except (OSError, ValueError):
            return False

    def run(self, callbacks: list) -> None:
        for callback in reversed(callbacks):
            try:
                callback()
            except Exception as exc:
                util.debug("manager: cleanup failed: %r", exc)


_current = threading.local()


def current_connection() -> ConnectionState | None:
    """The connection whose call this server thread is running, if any."""
    return getattr(_current, "conn", None)


class _Managed(NamedTuple):
    obj: Any
    exposed: frozenset
    method_to_typeid: dict | None


class Server:
    """Serves the objects of one manager.  ``serve_forever()`` runs it.

    Extra keyword arguments (polyproc): ``ssl_context`` (a server-side
    ``ssl.SSLContext``: every connection is wrapped in TLS before the key
    handshake), ``max_frame_size``, ``handshake_timeout``,
    ``frame_timeout`` (seconds) and ``max_pending`` (connections in the
    handshake at once).
    """

    def __init__(self, registry: dict, address: Address | None,
                 authkey: bytes, serializer: str = "pickle", *,
                 ssl_context: ssl.SSLContext | None = None,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
                 max_pending: int = 256):
        if not isinstance(authkey, bytes):
            raise TypeError(f"authkey should be a byte string, not "
                            f"{type(authkey).__name__}")
        check_serializer(serializer)
        self.registry = registry
        self.authkey = bytes(authkey)
        self.serializer = serializer
        self.ssl_context = ssl_context
        self.max_frame_size = max_frame_size
        self.handshake_timeout = handshake_timeout
        self.frame_timeout = frame_timeout
        self.listener, self.address = listen(address or default_address())
        self.id_to_obj: dict[int, _Managed] = {}
        self.id_to_refcount: dict[int, int] = {}
        self.sessions: dict[bytes, ClientSession] = {_SERVER_SESSION: ClientSession()}
        # Re-entrant: a proxy living in the server (a nested one) may be
        # released by the garbage collector while this thread holds it.
        self.mutex = threading.RLock()
        self.stop_event = threading.Event()
        self._ids = itertools.count(1)
        self._pending = threading.BoundedSemaphore(max_pending)
        self._socks: set = set()          # every connection's socket
        # Released objects wait here RELEASE_GRACE seconds before they are
        # freed: ident -> (_Managed, deadline).  See _incref.
        self._dying: dict[int, tuple[_Managed, float]] = {}

    # --- life cycle -------------------------------------------------------

    def serve_forever(self) -> None:
        """Run the server until it is shut down, then exit the process.

        Like the stdlib's, it ends with ``sys.exit(0)``: the server process
        is meant to do nothing else.
        """
        # RebuildProxy and BaseProxy find it there (not a stdlib attribute).
        current_process()._manager_server = self  # type: ignore[attr-defined]
        # A process forked from the server (a SyncManager.Pool's workers)
        # must not keep the clients' sockets open: a client would then never
        # see the server die, and would wait forever for a reply.
        os.register_at_fork(after_in_child=functools.partial(
            _close_in_child, weakref.ref(self)))
        try:
            accepter = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="polyproc-manager-accept")
            accepter.start()
            try:
                while not self.stop_event.is_set():
                    self.stop_event.wait(1)
                    self.reap()
            except (KeyboardInterrupt, SystemExit):
                pass
        finally:
            self.close()
            sys.exit(0)

    def stop(self) -> None:
        """Ask ``serve_forever`` to return (from any thread)."""
        self.stop_event.set()

    def close(self) -> None:
        """Stop listening and run the shutdown hook; idempotent."""
        self.stop_event.set()
        try:
            self.listener.close()
        except OSError:
            pass
        if isinstance(self.address, str):
            try:
                os.unlink(self.address)
            except OSError:
                pass
        self.on_shutdown()

    def on_shutdown(self) -> None:
        """Hook for subclasses (``SharedMemoryManager`` unlinks segments)."""

    # --- connections --------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                if self.stop_event.is_set():
                    return
                # EMFILE and friends: back off instead of spinning.
                self.stop_event.wait(0.05)
                continue
            if not self._pending.acquire(blocking=False):
                util.debug("manager: too many connections in the handshake; "
                           "dropping one")
                sock.close()
                continue
            threading.Thread(target=self._serve_connection, args=(sock,),
                             daemon=True,
                             name="polyproc-manager-conn").start()

    def _open(self, sock: socket.socket) -> tuple[Channel, Hello]:
        """Handshake (TLS, key, ``Hello``) under ``handshake_timeout``."""
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            set_keepalive(sock)    # a client host that vanished frees its refs
        sock.settimeout(self.handshake_timeout)
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True)
            with self.mutex:
                self._socks.add(sock)       # the same descriptor, now TLS
        segment = None
        try:
            server_handshake(sock, self.authkey)
            if fastpath.possible(sock):
                segment = fastpath.accept_segment(sock)
            chan = Channel(sock, self.max_frame_size, self.frame_timeout)
            sock.settimeout(self.handshake_timeout)
            hello = decode(chan.recv(), "manager hello")
            sock.settimeout(None)
            if type(hello) is not Hello:
                raise ManagerProtocolError(
                    f"expected Hello, got {type(hello).__name__}")
        except BaseException:
            if segment is not None:
                segment.close()
            sock.close()                    # the TLS socket owns the descriptor
            with self.mutex:
                self._socks.discard(sock)
            raise
        if segment is not None:
            chan = fastpath.FastChannel(chan, segment, 1)
        return chan, hello

    def _serve_connection(self, sock: socket.socket) -> None:
        with self.mutex:
            self._socks.add(sock)
        try:
            self._serve_connection_inner(sock)
        finally:
            with self.mutex:
                self._socks.discard(sock)

    def _serve_connection_inner(self, sock: socket.socket) -> None:
        try:
            try:
                chan, hello = self._open(sock)
            finally:
                self._pending.release()
        except Exception as exc:    # any failure ends this connection only
            util.debug("manager: dropped a connection in the handshake: %r", exc)
            sock.close()
            return
        conn = None
        try:
            with self.mutex:
                session = self.sessions.setdefault(hello.session, ClientSession())
            if hello.lifeline:
                self._watch_lifeline(chan, session)
                self._release_session(hello.session, crashed=not session.leaving)
            else:
                conn = ConnectionState(chan)
                self._serve_requests(conn, session)
        finally:
            chan.close()
            with self.mutex:
                self._socks.discard(chan.sock)
            if conn is not None and conn.cleanups:
                self._settle_locks_of_closed(conn, session)

    @staticmethod
    def _watch_lifeline(chan: Channel, session: ClientSession) -> None:
        """Block until the lifeline's peer is gone.  It sends nothing but,
        when its process exits normally, a ``Goodbye``."""
        try:
            while True:
                if type(decode(chan.recv(), "lifeline message")) is Goodbye:
                    session.leaving = True
        except (EOFError, OSError, ManagerProtocolError, SerializationError):
            pass

    def _serve_requests(self, conn: ConnectionState, session: ClientSession) -> None:
        _current.conn = conn
        try:
            self._request_loop(conn, session)
        finally:
            _current.conn = None

    def _settle_locks_of_closed(self, conn: ConnectionState, session: ClientSession) -> None:
        """A connection closed while its client held locks: keep them, or
        release them if the client's process crashed.

        A thread that ended, or a process that exited normally, keeps its
        locks (the stdlib's meaning: another client may release them).  A
        process that crashed has them released, like a robust mutex (see
        ``ClientSession``).  Which of the two is known only when the process's
        lifeline closes, which may come after this connection closed: wait
        for it here, in the connection's own thread, since an ``RLock`` can
        only be released by the thread that holds it.  Ends early once
        another client released them all.
        """
        while conn.cleanups and not session.ended.wait(_HELD_POLL):
            if self.stop_event.is_set():
                return
        if session.crashed and conn.cleanups:
            conn.run(list(conn.cleanups.values()))

    def _request_loop(self, conn: ConnectionState, session: ClientSession) -> None:
        chan = conn.chan
        recv, send, encode = chan.recv, chan.send, chan.encode
        while True:
            try:
                frame = recv()
            except (EOFError, OSError, ManagerProtocolError) as exc:
                if not isinstance(exc, EOFError):
                    util.debug("manager: closing a connection: %r", exc)
                return
            conn.undo.clear()
            try:
                msg = decode(frame, "manager request")
            except (SerializationError, ManagerProtocolError) as exc:
                reply: Any = self._failure(exc)
            else:
                reply = self._dispatch(msg, session)
            if reply is None:
                continue
            try:
                payload = encode(reply, "manager reply")
            except Exception as exc:  # can't be pickled (of any type: see dumps)
                conn.run(conn.undo)
                payload = encode(self._failure(exc))
            try:
                try:
                    if conn.undo:
                        # The call took something (a queue item, a lock) that
                        # must go back if the client is gone: send on the
                        # socket, whose write fails when the peer closed it.
                        # (A fast-path reply would land in shared memory
                        # whether or not anyone reads it.)
                        chan.send_oneway(payload)
                    else:
                        send(payload)
                except FrameTooLargeError as exc:
                    release(payload)
                    conn.run(conn.undo)
                    send(encode(self._failure(exc)))
            except OSError:
                release(payload)     # its shared memory, if any
                conn.run(conn.undo)  # give back what the call took
                return

    # --- requests -------------------------------------------------------------

    def _dispatch(self, msg: Any, session: ClientSession) -> Any:
        kind = type(msg)
        try:
            if kind is Call:
                return self._call(msg, session)
            if kind is DecRef:
                self._decref(session, msg.idents)
                return None
            if kind is Create:
                return self._create(msg, session)
            if kind is IncRef:
                self._incref(session, msg.ident)
                return Ok(None)
            if kind is Control:
                return self._control(msg)
            raise ManagerProtocolError(f"unexpected message {kind.__name__}")
        except Exception as exc:
            return self._failure(exc)

    def _call(self, msg: Call, session: ClientSession) -> Any:
        try:
            entry = self.id_to_obj[msg.ident]
        except KeyError:
            raise ReferenceError(
                f"managed object {msg.ident} no longer exists: every proxy "
                "to it was released") from None
        method = msg.method
        obj = entry.obj
        if method in entry.exposed:
            function = getattr(obj, method)
        elif method in _FALLBACKS:
            function = _FALLBACKS[method].__get__(obj)
        else:
            raise AttributeError(
                f"method {method!r} of {type(obj).__name__!r} object is not "
                f"in exposed={tuple(sorted(entry.exposed))!r}")
        try:
            result = function(*msg.args, **msg.kwds)
        except Exception as exc:
            return self._failure(exc)
        if entry.method_to_typeid:
            typeid = entry.method_to_typeid.get(method)
            if typeid is not None:
                return self._new_proxy(typeid, result, session, True)
        if self.serializer != "pickle":
            return self._xmlrpc_result(result)
        return Ok(result)

    def _xmlrpc_result(self, result: Any) -> Ok | FailedText:
        """``Ok(result)`` as ``serializer='xmlrpclib'`` delivers it, or the
        stdlib's failure for a value XML-RPC cannot carry (a ``RemoteError``
        in the caller; the call itself has run)."""
        try:
            return Ok(xmlrpc_marshal(result))
        except Exception as exc:  # whatever the marshaller raises
            return FailedText(type(exc).__qualname__,
                              f"the result cannot be sent with "
                              f"serializer='xmlrpclib': {exc}",
                              "".join(traceback.format_exception(exc)))

    def _create(self, msg: Create, session: ClientSession) -> NewProxy:
        try:
            callable_ = self.registry[msg.typeid][0]
        except KeyError:
            raise ValueError(f"unknown typeid {msg.typeid!r}") from None
        if callable_ is None:
            if msg.kwds or len(msg.args) != 1:
                raise ValueError(f"typeid {msg.typeid!r} has no callable: pass "
                                 "exactly one object to manage")
            obj = msg.args[0]
        else:
            obj = callable_(*msg.args, **msg.kwds)
        return self._new_proxy(msg.typeid, obj, session, False)

    def _new_proxy(self, typeid: str, obj: Any, session: ClientSession,
                   with_proxytype: bool) -> NewProxy:
        _, exposed, method_to_typeid, proxytype = self.registry[typeid]
        if exposed is None:
            exposed = public_methods(obj)
        if method_to_typeid is not None:
            exposed = list(exposed) + [m for m in method_to_typeid
                                       if m not in exposed]
        ident = next(self._ids)
        managed = _Managed(obj, frozenset(exposed), method_to_typeid)
        with self.mutex:
            if session.released:
                # Created for a process that is gone: freed after the grace
                # period instead of kept for a reference nobody holds.
                self._dying[ident] = (managed, time.monotonic() + RELEASE_GRACE)
            else:
                self.id_to_obj[ident] = managed
                self.id_to_refcount[ident] = 1
                session[ident] += 1
        token = Token(typeid, self.address, ident)
        return NewProxy(token, tuple(exposed),
                        proxytype if with_proxytype else None)

    def _control(self, msg: Control) -> Ok:
        command = msg.command
        if command == "dummy":
            return Ok(None)
        if command == "shutdown":
            self.stop_event.set()
            return Ok(None)
        if command == "number_of_objects":
            with self.mutex:
                return Ok(len(self.id_to_obj))
        if command == "debug_info":
            with self.mutex:
                lines = [f"  {ident}:       refcount={self.id_to_refcount[ident]}"
                         f"\n    {str(entry.obj)[:75]}"
                         for ident, entry in sorted(self.id_to_obj.items())]
            return Ok("\n".join(lines))
        if command == "get_methods":
            return Ok(tuple(self.id_to_obj[msg.args[0]].exposed))
        raise ValueError(f"unknown manager command {command!r}")

    # --- references -------------------------------------------------------------

    def _incref(self, session: ClientSession, ident: int) -> None:
        with self.mutex:
            if session.released:
                return      # its process is gone: nobody would release it
            if ident not in self.id_to_refcount and ident in self._dying:
                # Released a moment ago, wanted again: a proxy inherited by a
                # fork child, or pickled into a task, whose sender dropped it.
                self.id_to_obj[ident] = self._dying.pop(ident)[0]
                self.id_to_refcount[ident] = 0
            if ident not in self.id_to_refcount:
                raise ReferenceError(
                    f"managed object {ident} no longer exists: every proxy "
                    "to it was released before this one was unpickled")
            self.id_to_refcount[ident] += 1
            session[ident] += 1

    def _decref(self, session: ClientSession, idents: tuple) -> None:
        dropped = []
        with self.mutex:
            for ident in idents:
                if session.get(ident, 0) <= 0:
                    continue            # not ours to release: ignore
                session[ident] -= 1
                if not session[ident]:
                    del session[ident]
                dropped.append(self._drop_one(ident, 1))
        del dropped   # the objects die here, outside the mutex

    def _drop_one(self, ident: int, count: int) -> Any:
        left = self.id_to_refcount.get(ident, 0) - count
        if left > 0:
            self.id_to_refcount[ident] = left
            return None
        self.id_to_refcount.pop(ident, None)
        entry = self.id_to_obj.pop(ident, None)
        if entry is not None:
            self._dying[ident] = (entry, time.monotonic() + RELEASE_GRACE)
        return None

    def reap(self) -> None:
        """Free the objects whose grace period is over (called every second)."""
        now = time.monotonic()
        with self.mutex:
            expired = [ident for ident, (_, deadline) in self._dying.items()
                       if deadline <= now]
            dropped = [self._dying.pop(ident) for ident in expired]
        del dropped   # the objects die here, outside the mutex

    def _release_session(self, session_id: bytes, crashed: bool = True) -> None:
        with self.mutex:
            session = self.sessions.pop(session_id, None) or ClientSession()
            dropped = [self._drop_one(ident, count)
                       for ident, count in session.items()]
            # The session's call connections may still hold requests that
            # arrived before its lifeline closed (a DecRef sent just before
            # the process exited): they must find nothing left to release,
            # or they would drop references that other processes hold.
            session.clear()
            session.released = True
            session.crashed = crashed
        session.ended.set()     # wakes _settle_locks_of_closed
        if dropped:
            util.debug("manager: released %d objects of a closed session",
                       len(dropped))
        del dropped

    # References held by proxies rebuilt inside the server (nested proxies).
    def local_incref(self, ident: int) -> None:
        self._incref(self.sessions[_SERVER_SESSION], ident)

    def local_decref(self, ident: int) -> None:
        self._decref(self.sessions[_SERVER_SESSION], (ident,))

    # --- errors -------------------------------------------------------------------

    @staticmethod
    def _failure(exc: BaseException) -> Failed | FailedText:
        text = "".join(traceback.format_exception(exc))
        try:
            pickle.loads(pickle.dumps(exc, 5))
        except Exception:
            return FailedText(type(exc).__qualname__, str(exc), text)
        return Failed(exc, text)


def _close_in_child(server_ref: Any) -> None:
    server = server_ref()
    if server is None:
        return
    for sock in [server.listener, *server._socks]:
        try:
            sock.close()        # this process's copy only
        except OSError:
            pass


def _fallback_getvalue(obj: Any) -> Any:
    return obj


def _fallback_str(obj: Any) -> str:
    return str(obj)


def _fallback_repr(obj: Any) -> str:
    return repr(obj)


# What the stdlib's ``Server.fallback_mapping`` provides for objects that do
# not expose these names.
_FALLBACKS = {"#GETVALUE": _fallback_getvalue, "__str__": _fallback_str,
              "__repr__": _fallback_repr}
