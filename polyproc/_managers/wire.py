"""The managers' wire: sockets, authentication, frames and message types.

Why polyproc does not use ``multiprocessing.connection`` here
-------------------------------------------------------------
The stdlib's manager talks through ``multiprocessing.connection``, which
has three problems for a server that may face a network:

* ``Connection.recv_bytes`` allocates whatever length a frame header
  claims, so eight bytes saying ``2**62`` make the server try to allocate
  exabytes;
* on 3.11 its challenge uses HMAC-MD5 (``deliver_challenge``);
* nothing is timed out: a client that connects and never speaks holds a
  server thread forever, and a half-sent frame blocks it just as long.

This module is the replacement, small enough to audit in one sitting.

Handshake (raw bytes; nothing from the peer is unpickled before it ends)::

    server -> client   MAGIC + S            S: 32 random bytes
    client -> server   HMAC(key, "client" + S) + C       C: 32 random bytes
    server -> client   status byte + HMAC(key, "server" + C + S)

Both digests are HMAC-SHA256 and compared with ``hmac.compare_digest``.
The direction labels stop a reflection attack (replaying the server's own
challenge back at it); the fresh challenges on both sides stop replays.
The whole handshake must finish within ``handshake_timeout`` seconds.

Frames: an 8-byte big-endian length, then a payload made by
``polyproc._transport.serialization.dumps``.  A length above ``max_frame_size`` ends
the connection with ``FrameTooLargeError`` before anything is allocated;
large payloads are read into a buffer that grows only as bytes actually
arrive, so a header that lies costs nothing.  Once the first byte of a
frame arrived the rest must follow within ``frame_timeout`` seconds.

Messages are small ``NamedTuple``s, one per kind (``Call``, ``Ok``, ...);
``encode``/``decode`` turn them into ``(kind, *fields)`` and back, so the
receiver dispatches on the type, never on position.

Reused from the stdlib: ``multiprocessing.connection.arbitrary_address``
for the default Unix-socket path.  Everything else is plain ``socket``,
``hmac`` and ``ssl``.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import socket
import struct
from multiprocessing import connection as _std_connection
from typing import Any, NamedTuple, TYPE_CHECKING

if TYPE_CHECKING:          # ssl is imported only by those who use TLS
    import ssl

from .._exceptions import (AuthenticationError, FrameTooLargeError,
                          ManagerProtocolError)
from .._transport.serialization import describe, dumps, dumps_in_band, loads

__all__ = [
    "Address", "Channel", "listen", "connect", "server_handshake",
    "client_handshake", "is_loopback", "default_address", "describe_address",
    "Hello", "Call", "Create", "IncRef", "DecRef", "Control", "Goodbye",
    "Ok", "NewProxy", "Failed", "FailedText",
    "DEFAULT_MAX_FRAME_SIZE", "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_FRAME_TIMEOUT", "dumps_in_band", "is_local_peer", "encode",
    "decode", "set_keepalive", "SERIALIZERS", "check_serializer",
    "xmlrpc_marshal",
]

Address = str | tuple

DEFAULT_MAX_FRAME_SIZE = 256 * 2**20
DEFAULT_HANDSHAKE_TIMEOUT = 5.0
DEFAULT_FRAME_TIMEOUT = 10.0

MAGIC = b"polyproc-manager/2\n"
_DIGEST = "sha256"
_NONCE = 32
_HEADER = struct.Struct("!Q")
_SMALL = 64 * 1024         # frames up to this size are read in one buffer


# --- messages --------------------------------------------------------------
# Requests (client -> server).  Replies follow only Call, Create, IncRef and
# Control; Hello, DecRef and Goodbye are one-way, so releasing proxies costs
# no round trip.

class Hello(NamedTuple):
    """First frame after the handshake: which client process this is.

    ``session`` is random per client process; the references a process
    holds are counted against it.  The ``lifeline`` connection is opened
    once per process and never used again: when it closes (the process
    exited or was killed) the server drops every reference of the session.
    """
    session: bytes
    lifeline: bool


class Call(NamedTuple):
    ident: int
    method: str
    args: tuple
    kwds: dict


class Create(NamedTuple):
    typeid: str
    args: tuple
    kwds: dict


class IncRef(NamedTuple):
    ident: int


class DecRef(NamedTuple):
    idents: tuple


class Goodbye(NamedTuple):
    """On the lifeline, the only frame after ``Hello``: the client process
    is exiting normally (its exit handlers run).  A lifeline that closes
    without it means the process crashed (killed by a signal, ``os._exit``),
    and only then are the locks it holds released (see ``Server``)."""


class Control(NamedTuple):
    """Manager-level commands: ``shutdown``, ``dummy``, ``debug_info``,
    ``number_of_objects``, ``get_methods``."""
    command: str
    args: tuple = ()


# Replies (server -> client).

class Ok(NamedTuple):
    value: Any


class NewProxy(NamedTuple):
    """The call returned an object the server keeps; build a proxy for it.

    The server has already counted one reference for the caller's session.
    """
    token: Any
    exposed: tuple
    proxytype: Any


class Failed(NamedTuple):
    exception: BaseException
    traceback: str


class FailedText(NamedTuple):
    """The exception could not cross the wire; what is known about it."""
    type_name: str
    message: str
    traceback: str


# The wire form of a message is ``(kind, *fields)``: the kind is a small
# int naming the NamedTuple class, so a message costs what a plain tuple
# costs to pickle.  Pickling the NamedTuple itself would name its class in
# every frame (module and qualname) and call its Python ``__new__`` on
# every load: 4 us more per call, a quarter of a call's whole time here.
# Code on both sides only ever sees the NamedTuples: ``encode`` and
# ``decode`` are the only functions that see the tuples.
_TYPES: tuple = (Hello, Call, Create, IncRef, DecRef, Control,
                 Ok, NewProxy, Failed, FailedText, Goodbye)
_KIND = {cls: kind for kind, cls in enumerate(_TYPES)}


def encode(msg: Any, what: str = "manager message", dumps: Any = dumps) -> Any:
    """The payload of *msg* (``SerializationError`` if it cannot be pickled)."""
    return dumps((_KIND[type(msg)], *msg), what)


def decode(frame: Any, what: str = "manager message") -> Any:
    """The message in *frame*: ``SerializationError`` if it cannot be
    unpickled, ``ManagerProtocolError`` if it is not a manager message."""
    obj = loads(frame, what)
    if type(obj) is tuple and obj and type(obj[0]) is int:
        try:
            return _TYPES[obj[0]](*obj[1:])
        except (IndexError, TypeError):
            pass
    raise ManagerProtocolError(f"not a manager message: {describe(obj)}")


# --- the serializers ------------------------------------------------------------
# ``serializer=`` of a manager, as in the stdlib: 'pickle' (the default) or
# 'xmlrpclib'.  polyproc's frames are always its own (the envelope above);
# what 'xmlrpclib' changes is what the *values* of a call may be and what
# they become: the arguments of a call or a create, and the value a call
# returns, go through an XML-RPC encoding and back, exactly as the stdlib's
# ``XmlClient``/``XmlListener`` send them.  So a tuple arrives as a list,
# bytes as ``xmlrpc.client.Binary``, a datetime as ``xmlrpc.client.DateTime``;
# an argument XML-RPC cannot carry (a set, an object, an int beyond 32 bits,
# a dict with non-str keys) raises ``xmlrpc.client.dumps``'s ``TypeError`` or
# ``OverflowError`` in the caller, and such a return value a ``RemoteError``,
# as with the stdlib.  Exceptions a method raises still arrive as
# themselves (the stdlib's xmlrpclib managers turn them into a TypeError,
# "exceptions must derive from BaseException"), and proxies returned by a
# method (``method_to_typeid``) work (the stdlib's cannot send a ``Token``).

SERIALIZERS = ("pickle", "xmlrpclib")


def check_serializer(serializer: str) -> None:
    """``KeyError`` (the stdlib's) for a serializer that does not exist."""
    if serializer not in SERIALIZERS:
        raise KeyError(f"unknown manager serializer {serializer!r}: use "
                       f"'pickle' or 'xmlrpclib'")


def xmlrpc_marshal(value: Any) -> Any:
    """*value* as the stdlib's xmlrpclib serializer delivers it.

    Raises what ``xmlrpc.client.dumps`` raises for what XML-RPC cannot
    carry: ``TypeError`` ("cannot marshal ..."), ``OverflowError``.
    """
    import xmlrpc.client as xmlrpclib  # loaded by those who use it
    text = xmlrpclib.dumps((value,), allow_none=True)
    (obj,), _ = xmlrpclib.loads(text)
    return obj


# --- addresses ---------------------------------------------------------------

def default_address() -> str:
    """A fresh Unix-socket path in polyproc's temporary directory."""
    # (the stdlib's, not in typeshed)
    return _std_connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]


def describe_address(address: Address) -> str:
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return repr(address)


def is_loopback(address: Address) -> bool:
    """True for Unix sockets and for TCP hosts that resolve only to loopback."""
    if not isinstance(address, tuple):
        return True
    host = address[0]
    if host in ("", None):          # '' binds every interface
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    # str(): typeshed's sockaddr also covers AF_PACKET's (int, bytes).
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback
               for info in infos)


def _family(address: Address) -> int:
    if isinstance(address, str):
        return socket.AF_UNIX
    if isinstance(address, tuple) and len(address) >= 2:
        return socket.AF_INET6 if ":" in str(address[0]) else socket.AF_INET
    raise ValueError(f"unrecognised manager address {address!r}: expected "
                     "(host, port) or a Unix socket path")


def listen(address: Address, backlog: int = 128) -> tuple[socket.socket, Address]:
    """A listening socket bound to *address*, and the address it got."""
    family = _family(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    bound = sock.getsockname()
    if family != socket.AF_UNIX:
        bound = (address[0], bound[1])   # keep the caller's host spelling
    return sock, bound


def connect(address: Address, timeout: float,
            ssl_context: ssl.SSLContext | None = None) -> socket.socket:
    """A connected (and, with *ssl_context*, TLS-wrapped) socket."""
    family = _family(address)
    if family == socket.AF_UNIX:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
    else:
        assert isinstance(address, tuple), "a TCP address is (host, port)"
        sock = socket.create_connection(address[:2], timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        set_keepalive(sock)
    if ssl_context is not None:
        host = address[0] if isinstance(address, tuple) else None
        sock = ssl_context.wrap_socket(
            sock, server_hostname=host if ssl_context.check_hostname else None)
    return sock


def is_local_peer(sock: socket.socket) -> bool:
    """True when the peer of a connected socket is on this machine (a Unix
    socket, or TCP from a loopback address)."""
    if sock.family == socket.AF_UNIX:
        return True
    try:
        host = sock.getpeername()[0]
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except (OSError, ValueError):
        return False


def set_keepalive(sock: socket.socket) -> None:
    """Probe an idle TCP link, so that a client waiting for a reply from a
    machine that vanished (no FIN, no RST) gets an error within about 30 s
    instead of waiting forever.  A dead server *process* is seen at once
    (its kernel closes the socket); this is for a dead host or network."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5),
                        ("TCP_KEEPCNT", 4)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


# --- handshake ----------------------------------------------------------------

def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed during the handshake")
        data += chunk
    return bytes(data)


def _digest(authkey: bytes, *parts: bytes) -> bytes:
    return hmac.new(authkey, b"".join(parts), _DIGEST).digest()


def server_handshake(sock: socket.socket, authkey: bytes) -> None:
    """Authenticate the client on *sock* (mutually); raise on any failure.

    Raises ``AuthenticationError`` for a wrong key, ``EOFError``/``OSError``
    (``socket.timeout`` included) when the peer goes away or stalls.  The
    caller sets the socket timeout.
    """
    challenge = os.urandom(_NONCE)
    sock.sendall(MAGIC + challenge)
    answer = _recv_exact(sock, 2 * _NONCE)
    expected = _digest(authkey, b"client", challenge)
    if not hmac.compare_digest(answer[:_NONCE], expected):
        try:
            sock.sendall(b"\x00" + bytes(_NONCE))
        except OSError:
            pass
        raise AuthenticationError("client sent a wrong digest")
    sock.sendall(b"\x01" + _digest(authkey, b"server", answer[_NONCE:],
                                   challenge))


def client_handshake(sock: socket.socket, authkey: bytes,
                     address: Address) -> None:
    """Authenticate to the server on *sock* and check that it knows the key."""
    where = describe_address(address)
    greeting = _recv_exact(sock, len(MAGIC) + _NONCE)
    if not greeting.startswith(MAGIC):
        raise AuthenticationError(
            f"{where} is not a polyproc manager (unexpected greeting)")
    challenge = greeting[len(MAGIC):]
    mine = os.urandom(_NONCE)
    sock.sendall(_digest(authkey, b"client", challenge) + mine)
    status = _recv_exact(sock, 1 + _NONCE)
    if status[0] != 1:
        raise AuthenticationError(
            f"the manager at {where} rejected the authentication key: "
            "client and server must use the same authkey")
    if not hmac.compare_digest(status[1:], _digest(authkey, b"server", mine,
                                                   challenge)):
        raise AuthenticationError(
            f"the manager at {where} could not prove it knows the "
            "authentication key: it is not the server you meant to reach")


# --- frames -------------------------------------------------------------------

class Channel:
    """One authenticated connection: send and receive whole frames.

    Not thread-safe: each thread uses its own channel (client side) and
    each connection has its own thread (server side).  ``recv`` blocks
    until a frame starts (there is no limit on the wait between frames, a
    proxy may sit idle for hours); the rest of a started frame must arrive
    within ``frame_timeout``.
    """

    __slots__ = ("sock", "max_frame_size", "frame_timeout", "_buf", "_view",
                 "_start", "_end", "busy", "pid", "dumps", "__weakref__")

    def encode(self, msg: Any, what: str = "manager message") -> Any:
        """``encode`` with this link's pickler (see ``dumps`` below)."""
        return encode(msg, what, self.dumps)

    def __init__(self, sock: socket.socket, max_frame_size: int,
                 frame_timeout: float):
        sock.settimeout(None)
        self.sock = sock
        self.max_frame_size = max_frame_size
        self.frame_timeout = frame_timeout
        self._buf = bytearray(_SMALL)
        self._view = memoryview(self._buf)
        self._start = 0          # unread bytes are _buf[_start:_end]
        self._end = 0
        self.busy = False        # a request is on the wire (client side)
        self.pid = os.getpid()
        # Large buffers go through shared memory only between processes of
        # one machine; a remote peer gets everything in the frame.
        self.dumps = dumps if is_local_peer(sock) else dumps_in_band

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        if self.sock is None:       # handed over to a FastChannel
            return
        try:
            self.sock.close()
        except OSError:
            pass

    def __del__(self) -> None:
        # A thread's channel is dropped with its thread: close it quietly
        # (no ResourceWarning for an unclosed socket).
        self.close()

    def check_size(self, n: int) -> None:
        """Refuse (``FrameTooLargeError``) a message of *n* bytes over the limit."""
        if n > self.max_frame_size:
            raise FrameTooLargeError(
                f"message of {n} bytes exceeds max_frame_size="
                f"{self.max_frame_size}; pass max_frame_size= to the "
                "manager to allow more, or send smaller pieces")

    def send(self, payload: bytes | bytearray | memoryview) -> None:
        n = len(payload)
        self.check_size(n)
        if n <= _SMALL:
            self.sock.sendall(_HEADER.pack(n) + payload)
        else:
            self.sock.sendall(_HEADER.pack(n))
            self.sock.sendall(payload)

    # A message that has no reply (``DecRef``).  The same as ``send`` here;
    # a ``FastChannel`` sends these on the socket (see there why).
    def send_oneway(self, payload: bytes | bytearray | memoryview) -> None:
        self.send(payload)

    def recv(self) -> bytes | bytearray:
        """The next frame's payload.  ``EOFError`` when the peer closed
        between frames; ``ManagerProtocolError`` for a broken frame."""
        if self._end - self._start < _HEADER.size:
            self._fill(_HEADER.size)
        (size,) = _HEADER.unpack_from(self._buf, self._start)
        if size > self.max_frame_size:
            raise FrameTooLargeError(
                f"peer announced a frame of {size} bytes, more than "
                f"max_frame_size={self.max_frame_size}")
        if _HEADER.size + size <= len(self._buf):
            if self._end - self._start < _HEADER.size + size:
                self._fill(_HEADER.size + size)
            begin = self._start + _HEADER.size
            self._start = begin + size
            return bytes(self._view[begin:begin + size])
        return self._recv_large(self._start + _HEADER.size, size)

    def _fill(self, need: int) -> None:
        """Make ``_buf[_start:_end]`` hold at least *need* bytes."""
        if self._start and self._start + need > len(self._buf):
            pending = self._end - self._start
            self._buf[:pending] = self._buf[self._start:self._end]
            self._start, self._end = 0, pending
        started = self._end > self._start
        while self._end - self._start < need:
            if started:
                self.sock.settimeout(self.frame_timeout)
            try:
                n = self.sock.recv_into(self._view[self._end:])
            except socket.timeout:
                raise ManagerProtocolError(
                    f"incomplete frame: nothing more arrived for "
                    f"{self.frame_timeout} s") from None
            finally:
                if started:
                    self.sock.settimeout(None)
            if not n:
                if started:
                    raise ManagerProtocolError("connection closed mid-frame")
                raise EOFError("connection closed")
            self._end += n
            started = True

    def _recv_large(self, begin: int, size: int) -> bytearray:
        # Grows with what arrives (never with what the header claims).
        out = bytearray(self._view[begin:self._end])
        self._start = self._end = 0
        self.sock.settimeout(self.frame_timeout)
        try:
            while len(out) < size:
                chunk = self.sock.recv(min(size - len(out), 4 * 2**20))
                if not chunk:
                    raise ManagerProtocolError("connection closed mid-frame")
                out += chunk
        except socket.timeout:
            raise ManagerProtocolError(
                f"incomplete frame: nothing more arrived for "
                f"{self.frame_timeout} s") from None
        finally:
            self.sock.settimeout(None)
        return out
