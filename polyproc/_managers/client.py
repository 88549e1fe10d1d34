"""Client side of the managers: the connections one process keeps to a server.

One ``ManagerClient`` per (process, manager address, key).  It owns:

* a **lifeline** connection, opened once and never written to after its
  ``Hello`` but for a ``Goodbye`` when the process exits normally: the
  server counts this process's references against the lifeline's session
  and drops them all when it closes, so a process killed in the middle of
  a call cannot leak objects; the ``Goodbye`` tells a normal exit (the
  locks it holds stay held, as in the stdlib) from a crash (they are
  released);
* one **call connection per thread** (as the stdlib's proxies do), so a
  call that blocks in the server (``Lock.acquire``) blocks only its thread;
  to a server on this machine it is a ``FastChannel`` (``_managers.fastpath``:
  the messages go through shared memory, the lifeline stays a plain socket);
* a queue of pending ``DecRef``s.

Why releases are queued: a proxy is released by a ``weakref.finalize``
callback, which the garbage collector may run in any thread at any moment,
including in the middle of a call on that thread's own connection.
Writing a frame there would corrupt the stream, so the callback only
appends the id; it is sent at once when the thread's connection is idle,
or else in front of the next request (``DecRef`` needs no reply, so this
costs no round trip).

After ``fork`` the child closes its copies of the parent's sockets and
starts with no clients: a connection is never shared by two processes.
"""
from __future__ import annotations

import collections
import os
import select
import threading
import weakref
from multiprocessing import util
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:          # ssl is imported only by those who use TLS
    import ssl

from .._exceptions import (AuthenticationError, FrameTooLargeError,
                          ManagerConnectionError, ManagerProtocolError)
from .wire import (DEFAULT_FRAME_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT,
                            DEFAULT_MAX_FRAME_SIZE, Address, Channel, DecRef,
                            Goodbye, Hello, client_handshake, connect, decode,
                            describe_address, is_local_peer)
from .._transport.serialization import release
from . import fastpath

__all__ = ["ManagerClient", "get_client", "drop_client", "queue_decref",
           "register_client_options", "register_authkey", "known_authkey"]


class ManagerClient:
    """This process's connections to the manager at *address*."""

    def __init__(self, address: Address, authkey: bytes,
                 ssl_context: ssl.SSLContext | None = None,
                 connect_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE):
        self.address = address
        self.authkey = bytes(authkey)
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.max_frame_size = max_frame_size
        self.session = os.urandom(16)
        self._local = threading.local()
        # Re-entrant: the garbage collector may run a proxy's finalizer
        # (flush_if_idle -> _discard) while this thread holds it.
        self._lock = threading.RLock()
        self._lifeline_lock = threading.Lock()
        self._lifeline: Channel | None = None
        # Weak: a thread's channel dies with the thread (its threading.local
        # goes, the socket closes, the server's thread for it ends); this set
        # only lets close() and the fork hook reach the live ones.
        self._channels: weakref.WeakSet[Channel] = weakref.WeakSet()
        self.pending_decrefs: collections.deque = collections.deque()

    def _connect(self, lifeline: bool) -> Channel:
        where = describe_address(self.address)
        sock = None
        try:
            sock = connect(self.address, self.connect_timeout, self.ssl_context)
            sock.settimeout(self.connect_timeout)
            client_handshake(sock, self.authkey, self.address)
            segment = None
            if fastpath.possible(sock):
                # Call connections to a server on this machine go through
                # shared memory (see fastpath.py); the lifeline
                # carries nothing.
                segment = fastpath.offer_segment(
                    sock, not lifeline and fastpath.available())
            chan = Channel(sock, self.max_frame_size, DEFAULT_FRAME_TIMEOUT)
            chan.send(chan.encode(Hello(self.session, lifeline)))
            if segment is not None:
                chan = fastpath.FastChannel(chan, segment, 0)
        except AuthenticationError:
            if sock is not None:
                sock.close()
            raise
        except (OSError, EOFError) as exc:
            if sock is not None:
                sock.close()
            raise ManagerConnectionError(
                f"cannot connect to the manager at {where}: {exc!r}. The "
                "manager server is not running (it was shut down or died), "
                "or the address is wrong.", self.address) from exc
        with self._lock:
            self._channels.add(chan)
        return chan

    def channel(self) -> Channel:
        """This thread's call connection (opened on first use)."""
        chan = getattr(self._local, "chan", None)
        if chan is None:
            if self._lifeline is None:
                # One lifeline per session, ever: closing a second one would
                # make the server drop the whole session's references.
                with self._lifeline_lock:
                    if self._lifeline is None:
                        self._lifeline = self._connect(True)
            chan = self._local.chan = self._connect(False)
        return chan

    def request(self, msg: Any, what: str) -> Any:
        """Send *msg*, wait for its reply, return the reply message.

        Raises ``SerializationError`` when *msg* cannot be pickled (nothing
        was sent), ``ManagerConnectionError`` when the server is gone.  A
        call interrupted while it waits (``KeyboardInterrupt``) abandons
        this thread's connection, whose next frame would be a stale reply.
        """
        chan = self.channel()
        payload = chan.encode(msg, what)
        chan.busy = True
        try:
            if self.pending_decrefs:
                self._flush(chan)
            chan.send(payload)
        except FrameTooLargeError:
            release(payload)
            chan.busy = False
            raise               # refused before anything was written
        except BaseException as exc:
            release(payload)
            chan.busy = False
            self._discard(chan)
            if isinstance(exc, OSError):
                raise ManagerConnectionError(
                    f"lost the connection to the manager at "
                    f"{describe_address(self.address)} during {what}: "
                    f"{exc!r}. The manager server died or was shut down.",
                    self.address) from exc
            raise
        try:
            frame = chan.recv()
        except (OSError, EOFError, ManagerProtocolError) as exc:
            self._discard(chan)
            raise ManagerConnectionError(
                f"lost the connection to the manager at "
                f"{describe_address(self.address)} during {what}: {exc!r}. "
                "The manager server died or was shut down.",
                self.address) from exc
        except BaseException:
            self._discard(chan)
            raise
        finally:
            chan.busy = False
        return decode(frame, "manager reply")

    def on_this_machine(self) -> bool:
        """True when the server runs on this machine (a Unix socket, or
        TCP over loopback): shared memory can then be shared with it."""
        return is_local_peer(self.channel().sock)

    def check_server(self) -> None:
        """Raise ``ManagerConnectionError`` if the server is gone.

        One ``poll`` of the lifeline, which the server never writes to: it
        is readable only once the server's end closed.  For operations that
        do not otherwise talk to the server (a managed queue's shared
        memory), so that a dead server is an error there too.
        """
        lifeline = self._lifeline
        if lifeline is not None and lifeline.sock is not None:
            # One poll object per thread: poll() refuses concurrent calls.
            poller = getattr(self._local, "lifeline_poll", None)
            if poller is None or poller[0] is not lifeline:
                watch = select.poll()
                watch.register(lifeline.sock.fileno(), select.POLLIN)
                poller = self._local.lifeline_poll = (lifeline, watch)
            if not poller[1].poll(0):
                return
        raise ManagerConnectionError(
            f"the manager at {describe_address(self.address)} is gone: it "
            "was shut down or died.", self.address)

    def _flush(self, chan: Channel) -> None:
        idents = []
        pending = self.pending_decrefs
        while pending:
            try:
                idents.append(pending.popleft())
            except IndexError:
                break
        if idents:
            chan.send_oneway(chan.encode(DecRef(tuple(idents))))

    def flush_if_idle(self) -> None:
        """Send queued releases now if this thread's connection is idle."""
        chan = getattr(self._local, "chan", None)
        if chan is None or chan.busy:
            return
        chan.busy = True
        try:
            self._flush(chan)
        except Exception:
            self._discard(chan)
        finally:
            chan.busy = False

    def _discard(self, chan: Channel) -> None:
        if getattr(self._local, "chan", None) is chan:
            self._local.chan = None
        with self._lock:
            self._channels.discard(chan)
        chan.close()

    def say_goodbye(self) -> None:
        """Tell the server, on the lifeline, that this process ends normally.

        Sent by the exit hook (``_say_goodbye_at_exit``) and by ``close()``.
        The server then keeps the locks this process holds once its
        connections close, as the stdlib's does; without it (SIGKILL, a
        crash, ``os._exit``) they are released.  Never raises.
        """
        lifeline = self._lifeline
        if lifeline is None or lifeline.sock is None or lifeline.pid != os.getpid():
            return
        try:
            with self._lifeline_lock:
                lifeline.send(lifeline.encode(Goodbye(), "goodbye"))
        except (OSError, ValueError):   # the server is gone, or we are exiting
            pass

    def close(self) -> None:
        """Close every connection (the server then drops our references)."""
        self.say_goodbye()
        with self._lock:
            channels = list(self._channels)
            self._channels = weakref.WeakSet()
            self._lifeline = None
        for chan in channels:
            chan.close()
        self._local = threading.local()


# --- the process's clients ---------------------------------------------------

_clients: dict[tuple, ManagerClient] = {}
# Re-entrant: the garbage collector may run a dead manager's finalizer
# (_finalize_manager -> drop_client) while this thread is inside get_client
# holding it; a plain lock would deadlock that thread on itself.
_clients_lock = threading.RLock()
# Options a process learns from its managers, per (address, key): a client
# SSL context, the frame limit.  And the key of each address, for proxies
# that arrive without one.  Fork children inherit both, so proxies passed
# to forked workers reach a TLS or explicit-key manager too.
_options: dict[tuple, dict] = {}
_authkeys: dict[Any, bytes] = {}


def register_client_options(address: Address, authkey: bytes,
                            **options: Any) -> None:
    _options[(_key_address(address), bytes(authkey))] = options


def register_authkey(address: Address, authkey: bytes) -> None:
    _authkeys[_key_address(address)] = bytes(authkey)


def known_authkey(address: Address) -> bytes | None:
    return _authkeys.get(_key_address(address))


def _key_address(address: Address) -> Any:
    return tuple(address) if isinstance(address, list) else address


def get_client(address: Address, authkey: bytes) -> ManagerClient:
    key = (_key_address(address), bytes(authkey))
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                opts = _options.get(key, {})
                client = ManagerClient(
                    key[0], key[1], opts.get("ssl_context"),
                    opts.get("connect_timeout", DEFAULT_HANDSHAKE_TIMEOUT),
                    opts.get("max_frame_size", DEFAULT_MAX_FRAME_SIZE))
                _clients[key] = client
                _register_goodbye()
    return client


class _ExitHook:
    """This process's exit hook: a ``util.Finalize`` calling
    ``_say_goodbye_at_exit``.

    ``util.Finalize``, not ``atexit``: a multiprocessing child runs
    ``util._exit_function`` when it ends normally (its ``run()`` returned
    or raised), not always atexit's handlers.  Its priority is below every
    other finalizer's: a Pool or manager the process finalizes first may
    still use proxies.  Registered again whenever the finalizer registry
    lost it: a child's bootstrap empties the registry *after* unpickling
    its arguments, whose proxies may already have made clients.
    """

    finalizer: Any = None

    def ensure(self) -> None:
        f = self.finalizer
        if f is None or f._pid != os.getpid() or not f.still_active():
            self.finalizer = util.Finalize(None, _say_goodbye_at_exit,
                                           exitpriority=-1000)


_exit_hook = _ExitHook()


def _register_goodbye() -> None:
    _exit_hook.ensure()


def _exit_hook_after_bootstrap(hook: _ExitHook) -> None:
    if _clients:
        hook.ensure()


util.register_after_fork(_exit_hook, _exit_hook_after_bootstrap)


def _say_goodbye_at_exit() -> None:
    """Exit hook: this process ends normally; tell every server it used."""
    for client in list(_clients.values()):
        client.say_goodbye()


def drop_client(address: Address) -> None:
    """Close and forget every client of *address* (the manager shut down)."""
    with _clients_lock:
        keys = [k for k in _clients if k[0] == _key_address(address)]
        clients = [_clients.pop(k) for k in keys]
    for client in clients:
        client.close()


def queue_decref(key: tuple, ident: int, pid: int) -> None:
    """``weakref.finalize`` callback of a proxy: release its reference."""
    if os.getpid() != pid:
        return                  # a fork child's copy: the parent holds it
    client = _clients.get(key)
    if client is None:
        return                  # the manager was shut down meanwhile
    client.pending_decrefs.append(ident)
    try:
        client.flush_if_idle()
    except Exception:           # may run during interpreter shutdown
        pass


# This process's pid, kept current by the fork hook below: proxies compare
# it on every call, and os.getpid() is a system call.
pid = os.getpid()


def _after_fork_in_child() -> None:
    global _clients_lock, pid
    pid = os.getpid()
    _clients_lock = threading.RLock()
    for client in list(_clients.values()):
        for chan in list(client._channels):
            chan.close()        # only this process's copy of the socket
    _clients.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
