"""``polyproc.connection``: the stdlib's ``multiprocessing.connection``, with zero-copy ``send``.

Reused from the stdlib as it is: the whole ``Connection`` machinery (framing,
``send_bytes``/``recv_bytes``/``recv_bytes_into``, ``poll``, ``fileno``,
``close``), ``Listener``/``Client`` with their authentication, ``wait``, and
every other public name (re-exported, the rest reachable through module
``__getattr__``).

Changed: ``Pipe``, ``Client`` and ``Listener.accept`` return
``polyproc.connection.Connection``, a subclass whose ``send``/``recv`` go
through ``polyproc._transport.serialization``, so large NumPy arrays and buffers cross
through shared memory instead of the pipe, and what cannot be pickled
raises what pickle raised (``_exceptions.pickling_error``), naming the
object.  Pickling a connection (to pass it to a child, or through a queue)
keeps the stdlib's meaning:
the file descriptor is duplicated into the receiver, which gets a polyproc
``Connection`` again.

A polyproc connection talking to a *stdlib* one (a ``Client`` in a program
that does not use polyproc) can still exchange everything except large
buffers, which the stdlib end cannot read: use ``send_bytes`` there.
"""
from __future__ import annotations

import io
import multiprocessing.connection as _std
import os
import socket
import sys
from multiprocessing import reduction as _reduction
from typing import TYPE_CHECKING, Any

from .. import _public
from . import serialization as _serialization

__all__ = ["Connection", "Pipe", "Listener", "Client"]


class Connection(_std.Connection):
    """A connection whose ``send``/``recv`` move large buffers through shared memory."""

    if TYPE_CHECKING:
        # The stdlib's private methods that send and recv use (typeshed
        # leaves them out).
        def _check_closed(self) -> None: ...
        def _check_readable(self) -> None: ...
        def _check_writable(self) -> None: ...
        def _send_bytes(self, buf: bytes | memoryview) -> None: ...
        def _recv_bytes(self, maxsize: int | None = None) -> io.BytesIO: ...

    def send(self, obj: Any) -> None:
        """Send a (picklable) object.

        Blocks until the payload is written (shared-memory segments are
        created first, so a large array costs one copy, not a pipe trip).
        Raises what pickle raised if *obj* cannot be pickled, and
        ``OSError`` if the connection is broken; in both cases the
        connection is left usable (no partial message is written).
        """
        self._check_closed()
        self._check_writable()
        payload = _serialization.dumps(obj, "object sent through a Connection")
        try:
            self._send_bytes(payload)
        except BaseException:
            _serialization.release(payload)  # nobody will receive it
            raise

    def recv(self) -> Any:
        """Receive a (picklable) object.

        Blocks until a message arrives.  Raises ``EOFError`` when the other
        end is closed and there is nothing left to receive, and
        ``SerializationError`` when the message cannot be rebuilt here.
        """
        self._check_closed()
        self._check_readable()
        buf = self._recv_bytes()
        return _serialization.loads(buf.getbuffer(),
                                    "object received from a Connection")

    def __reduce__(self) -> tuple[Any, ...]:
        # The stdlib registers its reducer for its own class only; this is
        # the same, rebuilding a polyproc Connection on the other side.
        return _rebuild_connection, (_reduction.DupFd(self.fileno()),
                                     self.readable, self.writable)


def _rebuild_connection(df: Any, readable: bool, writable: bool) -> Connection:
    return Connection(df.detach(), readable, writable)


def _adopt(conn: _std.Connection) -> Connection:
    """Turn a stdlib connection into a polyproc one (same descriptor)."""
    fd = os.dup(conn.fileno())
    readable, writable = conn.readable, conn.writable
    conn.close()
    return Connection(fd, readable, writable)


if sys.platform == "win32":  # pragma: no cover - polyproc targets POSIX
    Pipe = _std.Pipe
else:
    def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:
        """Returns pair of connection objects at either end of a pipe.

        As ``multiprocessing.Pipe``; the connections are polyproc's.
        """
        if duplex:
            s1, s2 = socket.socketpair()
            s1.setblocking(True)
            s2.setblocking(True)
            return Connection(s1.detach()), Connection(s2.detach())
        fd1, fd2 = os.pipe()
        return (Connection(fd1, writable=False),
                Connection(fd2, readable=False))


class Listener(_std.Listener):
    """As ``multiprocessing.connection.Listener``; ``accept()`` returns a
    polyproc ``Connection``."""

    def accept(self) -> Connection:
        """Accept a connection on the bound socket; blocks until a client connects.

        Raises ``AuthenticationError`` when an *authkey* was given and the
        client does not know it.
        """
        return _adopt(super().accept())


def Client(address: str | bytes | tuple[str, int], family: str | None = None,
           authkey: bytes | None = None) -> Connection:
    """Returns a connection to the address of a ``Listener``.

    As ``multiprocessing.connection.Client``; the connection is polyproc's.
    """
    return _adopt(_std.Client(address, family, authkey))


# Public as ``polyproc.connection.X`` (reprs, pickles), even in a process
# that never imported that module (a child that received a Connection).
_public.fixup_module_metadata("polyproc.connection", {name: globals()[name] for name in __all__})
