"""Managers: ``BaseManager``, ``SyncManager`` and ``SharedMemoryManager``.

Adapted from ``multiprocessing.managers``; the public behaviour is the
stdlib's (``register``, ``start``, ``connect``, ``get_server``,
``shutdown``, the context manager, the typeids of ``SyncManager``).
Reused unchanged: ``State``, the server-side ``Namespace``, ``Value`` and
``Array`` types, ``_SharedMemoryTracker``, and ``register``'s rules for
``exposed``/``method_to_typeid``/``create_method``.  What changed:

* The transport (``_managers.wire``, ``_managers.server``,
  ``_managers.client``): HMAC-SHA256 mutual authentication, bounded frames,
  timeouts, persistent per-thread connections, optional TLS.
* Binding to a non-loopback address without an explicit ``authkey`` is
  refused (``InsecureAddressError``): the default key is the process's own
  and was never meant to guard a network port.
* A manager started by ``start()`` is told to stop over a private pipe
  (the stdlib connects and authenticates just to say "shutdown"), and it
  stops by itself when its parent dies, even by SIGKILL (the stdlib's
  server lives on as an orphan).
* The registry travels to the server process through
  ``polyproc._transport.serialization``, so ``register`` accepts lambdas and
  closures under every start method.
* ``SyncManager.Pool`` makes a ``polyproc.pool.Pool``.
* ``Queue``, ``JoinableQueue``, ``Lock``, ``RLock``, ``Condition``,
  ``Semaphore`` and ``BoundedSemaphore`` live in the server as the types of
  ``_managers.server_types``: the stdlib's, plus care for callers that die mid-call
  (no lost item or permit, no lock held by the dead).

Extra keyword arguments (polyproc): ``ssl_context`` (server side for
``start``/``get_server``, client side for ``connect``; one context can
serve both when it is set up for both), ``max_frame_size``,
``handshake_timeout``, ``frame_timeout``, ``max_pending`` (connections in
the handshake at once; more are closed on accept).
"""
from __future__ import annotations

import os
import signal
import threading
from multiprocessing import connection, util
# Array, State, Value, AuthenticationString: the stdlib's, not in typeshed.
from multiprocessing.managers import Array, Namespace, State, Value  # type: ignore[attr-defined]
from multiprocessing.process import AuthenticationString, current_process  # type: ignore[attr-defined]
from types import TracebackType
from typing import Any, Callable, ClassVar, TYPE_CHECKING, TypeVar

if TYPE_CHECKING:          # ssl is imported only by those who use TLS
    import ssl

from .._exceptions import InsecureAddressError, ProcessError
from .._process.context import default_context
from .client import (drop_client, get_client, register_authkey,
                              register_client_options)
from .proxy import (AcquirerProxy, ArrayProxy, AutoProxy,
                             BarrierProxy, ConditionProxy, DictProxy,
                             EventProxy, IteratorProxy, ListProxy,
                             NamespaceProxy, PoolProxy, SetProxy, ValueProxy,
                             _unwrap, _xmlrpc_arguments)
from .server import Server
from .queue import QueueProxy, ServerRingQueue
from .. import _platform
from .server_types import (ServerBoundedSemaphore, ServerCondition,
                             ServerLock, ServerQueue, ServerRLock,
                             ServerSemaphore)
from .wire import (DEFAULT_FRAME_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT,
                            DEFAULT_MAX_FRAME_SIZE, Control, Create,
                            check_serializer, describe_address, is_loopback)
from .._transport.serialization import dumps, loads

__all__ = ["BaseManager", "SyncManager", "SharedMemoryManager", "State",
           "Namespace", "Value", "Array"]

_PARENT_POLL = 0.5      # seconds between checks that the parent is alive

# ``with SyncManager() as m``: m is a SyncManager, for type checkers.
_ManagerT = TypeVar("_ManagerT", bound="BaseManager")


class BaseManager:
    """Base class for managers.

    ``BaseManager(address=None, authkey=None, serializer='pickle', ctx=None,
    *, shutdown_timeout=1.0)`` as in the stdlib; ``address=None`` means a
    fresh Unix socket, ``authkey=None`` the current process's ``authkey``.
    ``serializer`` is ``'pickle'`` or ``'xmlrpclib'`` (values restricted to
    what XML-RPC carries, as in the stdlib: see ``_managers.wire``); another
    name raises ``KeyError``, as the stdlib's does.
    """

    _registry: ClassVar[dict] = {}
    _Server = Server

    def __init__(self, address: Any = None, authkey: bytes | None = None,
                 serializer: str = "pickle", ctx: Any = None, *,
                 shutdown_timeout: float = 1.0,
                 ssl_context: ssl.SSLContext | None = None,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
                 max_pending: int = 256):
        check_serializer(serializer)
        if isinstance(address, list):
            address = tuple(address)
        self._authkey_given = authkey is not None
        if authkey is None:
            authkey = current_process().authkey
        elif not isinstance(authkey, (bytes, bytearray)):
            raise TypeError(f"authkey should be a byte string, not "
                            f"{type(authkey).__name__}")
        self._address = address
        self._authkey = AuthenticationString(authkey)
        self._state = State()
        self._state.value = State.INITIAL
        self._serializer = serializer
        if ctx is None:
            ctx = default_context()
        self._ctx = ctx
        self._shutdown_timeout = shutdown_timeout
        self._ssl_context = ssl_context
        self._options = {"max_frame_size": max_frame_size,
                         "handshake_timeout": handshake_timeout,
                         "frame_timeout": frame_timeout,
                         "max_pending": max_pending}
        self._finalizer: Any = None
        self._process: Any = None

    # --- serving ------------------------------------------------------------

    def _check_initial(self) -> None:
        if self._state.value != State.INITIAL:
            if self._state.value == State.STARTED:
                raise ProcessError("Already started server")
            if self._state.value == State.SHUTDOWN:
                raise ProcessError("Manager has shut down")
            raise ProcessError(f"Unknown state {self._state.value!r}")

    def _check_bind_address(self) -> None:
        if self._address is not None and not self._authkey_given \
                and not is_loopback(self._address):
            raise InsecureAddressError(
                f"refusing to serve on {describe_address(self._address)} "
                "without an explicit authkey: that address is reachable from "
                "other machines.  Pass authkey=<secret bytes> (and share it "
                "with the clients), or bind to 127.0.0.1.")

    def get_server(self) -> Server:
        """Return a server object with ``serve_forever()`` and ``address``.

        Raises ``InsecureAddressError`` for a non-loopback address without
        an explicit ``authkey``, ``ProcessError`` if already started.
        """
        self._check_initial()
        self._check_bind_address()
        return self._Server(self._registry, self._address, bytes(self._authkey),
                            self._serializer, ssl_context=self._ssl_context,
                            **self._server_options())

    def _server_options(self) -> dict:
        return dict(self._options)

    def connect(self) -> None:
        """Connect manager object to the server process.

        Raises ``AuthenticationError`` for a wrong key and
        ``ManagerConnectionError`` when nothing serves at the address.
        """
        if self._address is None:
            raise ValueError("connect() needs the address of a running manager")
        self._remember_client_options()
        _unwrap(self._client().request(Control("dummy"), "connect"), None)
        register_authkey(self._address, self._authkey)
        self._state.value = State.STARTED

    def _remember_client_options(self) -> None:
        register_client_options(
            self._address, self._authkey, ssl_context=self._ssl_context,
            max_frame_size=self._options["max_frame_size"],
            connect_timeout=self._options["handshake_timeout"])

    def _client(self):
        return get_client(self._address, self._authkey)

    def start(self, initializer: Callable | None = None,
              initargs: tuple = ()) -> None:
        """Spawn a server process for this manager object.

        Blocks until the server listens.  Raises ``ProcessError`` if the
        server process could not start (its ``initializer`` raised, say),
        ``InsecureAddressError`` as ``get_server`` does.
        """
        self._check_initial()
        self._check_bind_address()
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if self._ssl_context is not None and \
                self._ctx.get_start_method() != "fork":
            raise ValueError(
                "an ssl.SSLContext cannot be sent to a server process started "
                f"with {self._ctx.get_start_method()!r}: use a fork context, "
                "or run get_server().serve_forever() in the serving process")
        reader, writer = connection.Pipe(duplex=False)      # address
        control_r, control_w = connection.Pipe(duplex=False)  # shutdown
        setup = dumps((self._registry, initializer, initargs),
                      "manager registry and initializer")
        self._process = self._ctx.Process(
            target=type(self)._run_server,
            args=(setup, self._address, bytes(self._authkey), self._serializer,
                  writer, control_r, self._ssl_context, self._server_options(),
                  (os.getpid(), self._ctx.get_start_method())))
        ident = ":".join(str(i) for i in self._process._identity)
        self._process.name = type(self).__name__ + "-" + ident
        self._process.start()
        writer.close()
        control_r.close()
        try:
            self._address = reader.recv()
        except EOFError:
            self._process.join(self._shutdown_timeout)
            control_w.close()
            raise ProcessError(
                f"the manager's server process exited before serving "
                f"(exit code {self._process.exitcode}); see its output for "
                "the error (an initializer that raised?)") from None
        finally:
            reader.close()
        self._remember_client_options()
        register_authkey(self._address, self._authkey)
        self._state.value = State.STARTED
        self._finalizer = util.Finalize(
            self, type(self)._finalize_manager,
            args=(self._process, self._address, control_w, self._state,
                  self._shutdown_timeout),
            exitpriority=0)

    @classmethod
    def _run_server(cls, setup: bytes, address: Any, authkey: bytes,
                    serializer: str, writer: Any, control: Any,
                    ssl_context: Any, options: dict,
                    parent: tuple[int, str]) -> None:
        """Create a server, report its address and run it (server process).

        *parent* is ``(pid of the process that called start(), start
        method)``, for ``_watch_control``.
        """
        # bpo-36368: Ctrl-C in the terminal must not kill the manager.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        registry, initializer, initargs = loads(setup, "manager registry")
        if initializer is not None:
            initializer(*initargs)
        server = cls._Server(registry, address, authkey, serializer,
                             ssl_context=ssl_context, **options)
        writer.send(server.address)
        writer.close()
        threading.Thread(target=_watch_control, args=(control, server, *parent),
                         daemon=True, name="polyproc-manager-control").start()
        util.info("manager serving at %r", server.address)
        server.serve_forever()

    @staticmethod
    def _finalize_manager(process: Any, address: Any, control: Any,
                          state: State, shutdown_timeout: float) -> None:
        """Stop the server process: ask, wait, then terminate, then kill."""
        drop_client(address)
        if process.is_alive():
            try:
                control.send(Control("shutdown"))
            except OSError:
                pass
            process.join(timeout=shutdown_timeout)
            if process.is_alive():
                util.info("manager still alive after shutdown request")
                process.terminate()
                process.join(timeout=shutdown_timeout)
                if process.is_alive():
                    process.kill()
                    process.join()
        control.close()
        state.value = State.SHUTDOWN

    def shutdown(self) -> None:
        """Stop the server process started by ``start()``.

        Waits up to ``shutdown_timeout`` for it to exit, then terminates
        (and finally kills) it.  Proxies then raise
        ``ManagerConnectionError``.  A manager that only ``connect()``-ed
        just closes its connections.
        """
        if self._finalizer is not None:
            self._finalizer()
        elif self._state.value == State.STARTED:
            drop_client(self._address)
            self._state.value = State.SHUTDOWN

    def join(self, timeout: float | None = None) -> None:
        """Join the manager process (if it has been spawned)."""
        if self._process is not None:
            self._process.join(timeout)

    # --- shared objects ----------------------------------------------------------

    def _create(self, typeid: str, /, *args: Any, **kwds: Any) -> Any:
        """Create a shared object in the server; return its ``NewProxy`` reply."""
        if self._state.value != State.STARTED:
            raise ProcessError("server not yet started: call start() or connect()")
        if self._serializer != "pickle":
            args, kwds = _xmlrpc_arguments(args, kwds)
        reply = self._client().request(Create(typeid, args, kwds),
                                       f"the arguments of {typeid}()")
        return reply

    def _debug_info(self) -> str:
        """Return some info about the server's shared objects and connections."""
        return _unwrap(self._client().request(Control("debug_info"),
                                              "debug_info"), None)

    def _number_of_objects(self) -> int:
        """Return the number of shared objects."""
        return _unwrap(self._client().request(Control("number_of_objects"),
                                              "number_of_objects"), None)

    def __enter__(self: _ManagerT) -> _ManagerT:
        if self._state.value == State.INITIAL:
            self.start()
        if self._state.value != State.STARTED:
            if self._state.value == State.SHUTDOWN:
                raise ProcessError("Manager has shut down")
            raise ProcessError(f"Unknown state {self._state.value!r}")
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc_val: BaseException | None, exc_tb: TracebackType | None) -> None:
        self.shutdown()

    @property
    def address(self) -> Any:
        return self._address

    @classmethod
    def register(cls, typeid: str, callable: Callable | None = None,
                 proxytype: Any = None, exposed: Any = None,
                 method_to_typeid: dict | None = None,
                 create_method: bool = True) -> None:
        """Register a type or callable with the manager class."""
        if "_registry" not in cls.__dict__:
            cls._registry = cls._registry.copy()
        if proxytype is None:
            proxytype = AutoProxy
        exposed = exposed or getattr(proxytype, "_exposed_", None)
        method_to_typeid = (method_to_typeid
                            or getattr(proxytype, "_method_to_typeid_", None))
        if method_to_typeid:
            for key, value in list(method_to_typeid.items()):
                if type(key) is not str or type(value) is not str:
                    raise TypeError(f"method_to_typeid must map str to str, "
                                    f"got {key!r}: {value!r}")
        cls._registry[typeid] = (callable, exposed, method_to_typeid, proxytype)

        if create_method:
            def temp(self, /, *args, **kwds):
                util.debug("requesting creation of a shared %r object", typeid)
                reply = self._create(typeid, *args, **kwds)
                reply = reply._replace(proxytype=proxytype)
                return _unwrap(reply, _ManagerAsProxy(self))
            temp.__name__ = typeid
            setattr(cls, typeid, temp)


class _ManagerAsProxy:
    """What ``_unwrap`` needs from a proxy, taken from a manager: new
    proxies get the manager's registry, serializer and key."""

    __slots__ = ("_manager", "_serializer", "_authkey")

    def __init__(self, manager: BaseManager):
        self._manager = manager
        self._serializer = manager._serializer
        self._authkey = manager._authkey


def _watch_control(control: Any, server: Server, creator: int,
                   method: str) -> None:
    """Server process: stop on a shutdown request, or when the parent is gone.

    *creator* is the pid of the process that called ``start()``, taken
    there: reading ``os.getppid()`` here instead would miss a parent killed
    between our start and this thread's (the test that caught it kills the
    parent as soon as ``start()`` returns).  Under fork and spawn the
    creator is our OS parent, so ``getppid()`` changing says it died, even
    when forked siblings keep its end of every pipe open.  Under forkserver
    our OS parent is the fork server; the parent sentinel tells instead.
    """
    from multiprocessing import parent_process
    sentinel_parent = parent_process() if method == "forkserver" else None
    while not server.stop_event.is_set():
        try:
            if control.poll(_PARENT_POLL):
                # Control("shutdown") is the only message on this private
                # pipe; EOF (the parent is gone) means the same.
                control.recv()
                break
        except (EOFError, OSError):
            break
        if sentinel_parent is not None:
            gone = not sentinel_parent.is_alive()
        else:
            gone = os.getppid() != creator
        if gone:
            util.info("manager: parent process died; shutting down")
            break
    server.stop()


# --- SyncManager ----------------------------------------------------------------

def _make_pool(*args: Any, **kwds: Any) -> Any:
    # Imported on first use: a manager's server seldom makes pools.
    from .._pool.api import Pool
    return Pool(*args, **kwds)


class SyncManager(BaseManager):
    """Subclass of ``BaseManager`` which supports a number of shared object
    types: ``Queue``, ``JoinableQueue``, ``Event``, ``Lock``, ``RLock``,
    ``Semaphore``, ``BoundedSemaphore``, ``Condition``, ``Barrier``,
    ``Pool``, ``list``, ``dict``, ``set`` (Python 3.14's, offered on every
    Python), ``Value``, ``Array``, ``Namespace``.
    """

    if TYPE_CHECKING:
        # The methods register() adds below, as type checkers see them (as
        # typeshed declares the stdlib's).  Last in the class: ``list``,
        # ``dict`` and ``set`` would shadow the builtins in annotations.
        def Queue(self, maxsize: int = 0) -> QueueProxy: ...
        def JoinableQueue(self, maxsize: int = 0) -> QueueProxy: ...
        def Event(self) -> EventProxy: ...
        def Lock(self) -> AcquirerProxy: ...
        def RLock(self) -> AcquirerProxy: ...
        def Semaphore(self, value: int = 1) -> AcquirerProxy: ...
        def BoundedSemaphore(self, value: int = 1) -> AcquirerProxy: ...
        def Condition(self, lock: Any = None) -> ConditionProxy: ...
        def Barrier(self, parties: int, action: Callable[[], object] | None = None,
                    timeout: float | None = None) -> BarrierProxy: ...
        def Pool(self, processes: int | None = None,
                 initializer: Callable[..., object] | None = None,
                 initargs: Any = (), maxtasksperchild: int | None = None,
                 **kwds: Any) -> PoolProxy: ...
        def Value(self, typecode: Any, value: Any, lock: bool = True) -> ValueProxy: ...
        def Array(self, typecode: Any, sequence: Any, lock: bool = True) -> ArrayProxy: ...
        def Namespace(self, **kwds: Any) -> NamespaceProxy: ...
        def list(self, *args: Any) -> ListProxy: ...
        def dict(self, *args: Any, **kwds: Any) -> DictProxy: ...
        def set(self, *args: Any) -> SetProxy: ...


if _platform.ORDERED_SHARED_MEMORY:
    # Items in shared memory, reached without the server from this machine
    # (see queue.py); elsewhere the stdlib's design, made robust.
    SyncManager.register("Queue", ServerRingQueue, QueueProxy)
    SyncManager.register("JoinableQueue", ServerRingQueue, QueueProxy)
else:  # pragma: no cover - non-Linux
    SyncManager.register("Queue", ServerQueue)
    SyncManager.register("JoinableQueue", ServerQueue)
SyncManager.register("Event", threading.Event, EventProxy)
SyncManager.register("Lock", ServerLock, AcquirerProxy)
SyncManager.register("RLock", ServerRLock, AcquirerProxy)
SyncManager.register("Semaphore", ServerSemaphore, AcquirerProxy)
SyncManager.register("BoundedSemaphore", ServerBoundedSemaphore,
                     AcquirerProxy)
SyncManager.register("Condition", ServerCondition, ConditionProxy)
SyncManager.register("Barrier", threading.Barrier, BarrierProxy)
SyncManager.register("Pool", _make_pool, PoolProxy)
SyncManager.register("list", list, ListProxy)
SyncManager.register("dict", dict, DictProxy)
SyncManager.register("set", set, SetProxy)          # Python 3.14, here on every Python
SyncManager.register("Value", Value, ValueProxy)
SyncManager.register("Array", Array, ArrayProxy)
SyncManager.register("Namespace", Namespace, NamespaceProxy)
# types returned by methods of PoolProxy
SyncManager.register("Iterator", proxytype=IteratorProxy, create_method=False)
SyncManager.register("AsyncResult", create_method=False)


# --- SharedMemoryManager ---------------------------------------------------------

class SharedMemoryServer(Server):
    """A ``Server`` that also tracks shared memory segments and unlinks them
    all when it shuts down (``track_segment``, ``release_segment``,
    ``list_segments`` commands, as in the stdlib)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        from multiprocessing.managers import _SharedMemoryTracker  # type: ignore[attr-defined]
        self.shared_memory_context = _SharedMemoryTracker(
            f"shm_{self.address}_{os.getpid()}", [])

    def _control(self, msg: Control):
        from .wire import Ok
        tracker = self.shared_memory_context
        if msg.command == "track_segment":
            tracker.register_segment(*msg.args)
            return Ok(None)
        if msg.command == "release_segment":
            tracker.destroy_segment(*msg.args)
            return Ok(None)
        if msg.command == "list_segments":
            return Ok(list(tracker.segment_names))
        return super()._control(msg)

    def on_shutdown(self) -> None:
        self.shared_memory_context.unlink()


class SharedMemoryManager(BaseManager):
    """Like ``SyncManager`` but its server tracks shared memory blocks.

    ``SharedMemory(size)`` and ``ShareableList(sequence)`` create blocks in
    the calling process and register them with the server, which unlinks
    every registered block when the manager shuts down.
    """

    _Server = SharedMemoryServer

    def __init__(self, *args: Any, **kwargs: Any):
        if os.name == "posix":
            # bpo-36867: one resource tracker for us and the server.
            from multiprocessing import resource_tracker
            resource_tracker.ensure_running()
        super().__init__(*args, **kwargs)

    def _track(self, name: str) -> None:
        _unwrap(self._client().request(Control("track_segment", (name,)),
                                       "track_segment"), None)

    def SharedMemory(self, size: int):
        """Returns a new SharedMemory instance with the specified size in
        bytes, to be tracked by the manager."""
        from multiprocessing import shared_memory
        sms = shared_memory.SharedMemory(None, create=True, size=size)
        try:
            self._track(sms.name)
        except BaseException:
            sms.unlink()
            raise
        return sms

    def ShareableList(self, sequence: Any):
        """Returns a new ShareableList instance populated with the values
        from the input sequence, to be tracked by the manager."""
        from multiprocessing import shared_memory
        sl = shared_memory.ShareableList(sequence)
        try:
            self._track(sl.shm.name)
        except BaseException:
            sl.shm.unlink()
            raise
        return sl

    def _list_segments(self) -> list:
        return _unwrap(self._client().request(Control("list_segments"),
                                              "list_segments"), None)

