"""Proxies: local stand-ins for objects that live in a manager server.

Adapted from ``multiprocessing.managers``.  Reused as they are: ``Token``,
the proxy-type machinery (``MakeProxyType`` builds a class whose methods
forward to ``_callmethod``; ``AutoProxy`` builds one from the methods the
server exposes), the list of methods every stdlib proxy type exposes, and
``RebuildProxy``'s rule that a proxy unpickled inside its own server is
"manager owned".  What changed:

* ``_callmethod`` sends one typed ``Call`` over this thread's persistent
  connection (``client.ManagerClient``) and reads one reply: no
  connection per call, no per-call handshake.
* References: a proxy made from a server reply adopts the reference the
  server already counted for this process (the stdlib opens two extra
  connections per proxy, one to incref and one to decref the temporary
  reference).  A proxy unpickled in another process sends one ``IncRef``.
  A proxy inherited through ``fork`` takes its reference lazily, on its
  first call in the child.  Releasing is a one-way ``DecRef``.
* Errors: the remote exception is re-raised as itself with the server's
  traceback as ``__cause__`` (``RemoteTraceback``); an exception that could
  not cross becomes ``RemoteError``; arguments that cannot be pickled raise
  ``SerializationError`` in the caller; a dead server raises
  ``ManagerConnectionError`` naming its address.
"""
from __future__ import annotations

import collections.abc
import os
import time
import types
import weakref
from multiprocessing.context import get_spawning_popen
from multiprocessing.managers import Token
# AuthenticationString: the stdlib's, not in typeshed.
from multiprocessing.process import AuthenticationString, current_process  # type: ignore[attr-defined]
from typing import Any, Protocol, cast

from .._exceptions import RemoteError, RemoteTraceback
from . import client as _manager_client
from .client import get_client, known_authkey, queue_decref
from .wire import (Call, Control, Failed, FailedText, IncRef, NewProxy,
                            Ok, xmlrpc_marshal)

__all__ = [
    "Token", "BaseProxy", "RebuildProxy", "MakeProxyType", "AutoProxy",
    "IteratorProxy", "AcquirerProxy", "ConditionProxy", "EventProxy",
    "BarrierProxy", "NamespaceProxy", "ValueProxy", "BaseListProxy",
    "ListProxy", "DictProxy", "SetProxy", "ArrayProxy", "BasePoolProxy",
    "PoolProxy",
]

_getpid = os.getpid

# How many proxies this process has pickled: a managed queue compares it
# before and after pickling an item, to tell items that hold proxies
# (see queue.HeldItem).
proxies_pickled = 0


# polyproc's servers make every Token with a str typeid, their address and
# an int id; typeshed's Token also allows bytes and None (as the stdlib's
# own code would).  Stated once here, for type checkers.
def _address(token: Token) -> str | tuple[Any, ...]:
    return cast("str | tuple[Any, ...]", token.address)


def _ident(token: Token) -> int:
    return cast(int, token.id)


def _local_decref(server: Any, ident: int, pid: int) -> None:
    if _getpid() == pid:
        try:
            server.local_decref(ident)
        except Exception:
            pass


class BaseProxy:
    """A proxy for a shared object living in a manager's server process.

    Same constructor as the stdlib's.  Calls block until the server
    replies; raise what the method raised there, ``SerializationError``
    for arguments or results that cannot be pickled, and
    ``ManagerConnectionError`` when the server is gone.
    """

    # Set by each proxy type (MakeProxyType, the classes below): the
    # referent's methods it may call, and which of them return proxies.
    _exposed_: tuple[str, ...]
    _method_to_typeid_: dict[str, str]

    def __init__(self, token: Token, serializer: str, manager: Any = None,
                 authkey: bytes | None = None, exposed: Any = None,
                 incref: bool = True, manager_owned: bool = False):
        self._token = token
        self._id = _ident(token)
        self._manager = manager
        self._serializer = serializer
        if authkey is None:
            if manager is not None:
                authkey = manager._authkey
            else:
                authkey = known_authkey(_address(token)) or current_process().authkey
        self._authkey = AuthenticationString(authkey)
        self._owned_by_manager = manager_owned
        self._client: Any = None
        self._pid: int | None = None
        if manager_owned:
            # Unpickled inside the server itself (a proxy stored in a
            # managed dict): the server holds the reference, no network.
            # (set on the server's process by Server.serve_forever)
            server = current_process()._manager_server  # type: ignore[attr-defined]
            server.local_incref(self._id)
            weakref.finalize(self, _local_decref, server, self._id, _getpid())
        elif incref:
            self._incref()
        else:
            self._adopt()

    def _adopt(self) -> None:
        """Own the reference the server already counted for this process."""
        client = get_client(_address(self._token), self._authkey)
        self._client = client
        self._pid = pid = _getpid()
        weakref.finalize(self, queue_decref,
                         (client.address, client.authkey), self._id, pid)

    def _incref(self) -> None:
        client = get_client(_address(self._token), self._authkey)
        _unwrap(client.request(IncRef(self._id), "incref"), self)
        self._adopt()

    def _attach(self) -> None:
        """First call in this process (a fork child, or inside the server)."""
        if self._owned_by_manager:
            self._client = get_client(_address(self._token), self._authkey)
            self._pid = _getpid()
        else:
            self._incref()

    def _callmethod(self, methodname: str, args: tuple = (),
                    kwds: dict = {}) -> Any:  # noqa: B006 - the stdlib's signature; not mutated
        """Call *methodname* of the referent and return (or raise) the result."""
        if self._pid != _manager_client.pid:
            self._attach()
        if self._serializer != "pickle":
            args, kwds = _xmlrpc_arguments(args, kwds)
        reply = self._client.request(Call(self._id, methodname, args, kwds),
                                     "the arguments of a manager call")
        if type(reply) is Ok:
            return reply.value
        return _unwrap(reply, self)

    def _getvalue(self) -> Any:
        """Get a copy of the value of the referent."""
        return self._callmethod("#GETVALUE")

    def __reduce__(self):
        global proxies_pickled
        proxies_pickled += 1
        kwds: dict[str, Any] = {}
        if get_spawning_popen() is not None:
            kwds["authkey"] = bytes(self._authkey)
        if getattr(self, "_isauto", False):
            kwds["exposed"] = self._exposed_
            return (RebuildProxy, (AutoProxy, self._token, self._serializer,
                                   kwds))
        return (RebuildProxy, (type(self), self._token, self._serializer, kwds))

    def __deepcopy__(self, memo: dict) -> Any:
        return self._getvalue()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} object, typeid {self._token.typeid!r} "
                f"at {id(self):#x}>")

    def __str__(self) -> str:
        """Return representation of the referent (or a fall-back if that fails)."""
        try:
            return self._callmethod("__repr__")
        except Exception:
            return repr(self)[:-1] + "; '__str__()' failed>"


def _xmlrpc_arguments(args: tuple, kwds: dict) -> tuple[tuple, dict]:
    """The arguments as ``serializer='xmlrpclib'`` delivers them (see
    ``_managers.wire``); raises ``TypeError``/``OverflowError`` here, in
    the caller, for what XML-RPC cannot carry, as the stdlib does."""
    args, kwds = xmlrpc_marshal((args, kwds))
    return tuple(args), kwds


class _ReplyContext(Protocol):
    """What _unwrap takes from the proxy (or manager) a reply is for."""

    _manager: Any
    _serializer: str
    _authkey: Any


def _unwrap(reply: Any, proxy: _ReplyContext | None) -> Any:
    """The value of a reply message, a new proxy, or the raised exception."""
    kind = type(reply)
    if kind is Ok:
        return reply.value
    if kind is NewProxy:
        token, exposed, proxytype = reply
        manager = proxy._manager if proxy is not None else None
        if manager is not None and token.typeid in manager._registry:
            proxytype = manager._registry[token.typeid][-1]
        if proxytype is None:
            proxytype = AutoProxy
        return proxytype(token, proxy._serializer if proxy else "pickle",
                         manager=manager,
                         authkey=proxy._authkey if proxy else None,
                         exposed=exposed, incref=False)
    if kind is Failed:
        exc = reply.exception
        exc.__cause__ = RemoteTraceback(reply.traceback)
        raise exc
    if kind is FailedText:
        raise RemoteError(reply.type_name, reply.message, reply.traceback)
    raise RemoteError(type(reply).__name__, "unexpected reply from the manager")


def RebuildProxy(func: Any, token: Token, serializer: str, kwds: dict) -> Any:
    """Function used for unpickling proxy objects."""
    server = getattr(current_process(), "_manager_server", None)
    if server is not None and server.address == token.address:
        kwds["manager_owned"] = True
        kwds["authkey"] = server.authkey
        kwds.pop("incref", None)
        return func(token, serializer, **kwds)
    incref = kwds.pop("incref", True)
    return func(token, serializer, incref=incref, **kwds)


def _forwarding_method(name: str) -> Any:
    # A closure, where the stdlib execs source text per method: the same
    # function, without compiling code for each of the ~60 methods of the
    # proxy types built at import (a couple of ms in every server process).
    def method(self, /, *args, **kwds):
        return self._callmethod(name, args, kwds)
    method.__name__ = method.__qualname__ = name
    return method


def MakeProxyType(name: str, exposed: Any,
                  _cache: dict = {}) -> type:  # noqa: B006 - a shared cache, as the stdlib's
    """Return a proxy type whose methods are given by *exposed*."""
    exposed = tuple(exposed)
    try:
        return _cache[(name, exposed)]
    except KeyError:
        pass
    dic: dict[str, Any] = {}
    for meth in exposed:
        if not meth.isidentifier():
            raise ValueError(f"exposed method name {meth!r} is not an identifier")
        dic[meth] = _forwarding_method(meth)
    dic["_exposed_"] = exposed
    ProxyType = type(name, (BaseProxy,), dic)
    _cache[(name, exposed)] = ProxyType
    return ProxyType


def AutoProxy(token: Token, serializer: str, manager: Any = None,
              authkey: bytes | None = None, exposed: Any = None,
              incref: bool = True, manager_owned: bool = False) -> BaseProxy:
    """Return an auto-proxy for *token*: one method per exposed method."""
    if authkey is None and manager is not None:
        authkey = manager._authkey
    if exposed is None:
        key = authkey or known_authkey(_address(token)) or current_process().authkey
        client = get_client(_address(token), key)
        exposed = _unwrap(client.request(Control("get_methods", (token.id,)),
                                         "get_methods"), None)
    ProxyType = MakeProxyType(f"AutoProxy[{cast(str, token.typeid)}]", exposed)
    proxy = ProxyType(token, serializer, manager=manager, authkey=authkey,
                      incref=incref, manager_owned=manager_owned)
    proxy._isauto = True
    return proxy


# --- the stdlib's proxy types, on polyproc's BaseProxy ------------------------

class IteratorProxy(BaseProxy):
    _exposed_ = ("__next__", "send", "throw", "close")

    def __iter__(self):
        return self

    def __next__(self, *args):
        return self._callmethod("__next__", args)

    def send(self, *args):
        return self._callmethod("send", args)

    def throw(self, *args):
        return self._callmethod("throw", args)

    def close(self, *args):
        return self._callmethod("close", args)


class AcquirerProxy(BaseProxy):
    # "locked": Python 3.14 (gh-115942), offered on every Python.
    _exposed_: tuple[str, ...] = ("acquire", "release", "locked")

    def acquire(self, blocking: bool = True, timeout: float | None = None):
        args = (blocking,) if timeout is None else (blocking, timeout)
        return self._callmethod("acquire", args)

    def release(self):
        return self._callmethod("release")

    def locked(self):
        """Whether the lock is held (by anyone), as ``threading.Lock.locked``."""
        return self._callmethod("locked")

    def __enter__(self):
        return self._callmethod("acquire")

    def __exit__(self, exc_type, exc_val, exc_tb):
        return self._callmethod("release")


class ConditionProxy(AcquirerProxy):
    _exposed_ = ("acquire", "release", "locked", "wait", "notify", "notify_all")

    def wait(self, timeout: float | None = None):
        return self._callmethod("wait", (timeout,))

    def notify(self, n: int = 1):
        return self._callmethod("notify", (n,))

    def notify_all(self):
        return self._callmethod("notify_all")

    def wait_for(self, predicate, timeout: float | None = None):
        result = predicate()
        if result:
            return result
        endtime = None if timeout is None else time.monotonic() + timeout
        waittime = None
        while not result:
            if endtime is not None:
                waittime = endtime - time.monotonic()
                if waittime <= 0:
                    break
            self.wait(waittime)
            result = predicate()
        return result


class EventProxy(BaseProxy):
    _exposed_ = ("is_set", "set", "clear", "wait")

    def is_set(self):
        return self._callmethod("is_set")

    def set(self):
        return self._callmethod("set")

    def clear(self):
        return self._callmethod("clear")

    def wait(self, timeout: float | None = None):
        return self._callmethod("wait", (timeout,))


class BarrierProxy(BaseProxy):
    _exposed_ = ("__getattribute__", "wait", "abort", "reset")

    def wait(self, timeout: float | None = None):
        return self._callmethod("wait", (timeout,))

    def abort(self):
        return self._callmethod("abort")

    def reset(self):
        return self._callmethod("reset")

    @property
    def parties(self):
        return self._callmethod("__getattribute__", ("parties",))

    @property
    def n_waiting(self):
        return self._callmethod("__getattribute__", ("n_waiting",))

    @property
    def broken(self):
        return self._callmethod("__getattribute__", ("broken",))


class NamespaceProxy(BaseProxy):
    _exposed_ = ("__getattribute__", "__setattr__", "__delattr__")

    def __getattr__(self, key):
        if key[0] == "_":
            return object.__getattribute__(self, key)
        callmethod = object.__getattribute__(self, "_callmethod")
        return callmethod("__getattribute__", (key,))

    def __setattr__(self, key, value):
        if key[0] == "_":
            return object.__setattr__(self, key, value)
        callmethod = object.__getattribute__(self, "_callmethod")
        return callmethod("__setattr__", (key, value))

    def __delattr__(self, key):
        if key[0] == "_":
            return object.__delattr__(self, key)
        callmethod = object.__getattribute__(self, "_callmethod")
        return callmethod("__delattr__", (key,))


class ValueProxy(BaseProxy):
    _exposed_ = ("get", "set")

    def get(self):
        return self._callmethod("get")

    def set(self, value):
        return self._callmethod("set", (value,))

    value = property(get, set)

    __class_getitem__: Any = classmethod(types.GenericAlias)


# The exposed method lists are the stdlib's, read from its own classes so
# the two can never disagree, plus what later Pythons added (so that this
# Python's stdlib lists miss nothing that 3.14's have: docs/compat.md).
import multiprocessing.managers as _std  # noqa: E402

# The stdlib's proxy classes, for their private _exposed_ and
# _method_to_typeid_ (and ArrayProxy, BasePoolProxy): not in typeshed.
_std_proxies: Any = _std


def _merged(*lists: tuple) -> tuple:
    return tuple(dict.fromkeys(name for names in lists for name in names))


# Python 3.14 (gh-103134): list proxies gained clear() and copy(); dict
# proxies fromkeys(), reversed(d), d | x, x | d and d |= x.
_LIST_ADDED_314 = ("clear", "copy")
_DICT_ADDED_314 = ("__ior__", "__or__", "__reversed__", "__ror__", "fromkeys")
# Python 3.14 (gh-129949): SyncManager.set() and its proxy, as 3.14 lists it.
_SET_EXPOSED_314 = (
    "__and__", "__class_getitem__", "__contains__", "__iand__", "__ior__",
    "__isub__", "__iter__", "__ixor__", "__len__", "__or__", "__rand__",
    "__ror__", "__rsub__", "__rxor__", "__sub__", "__xor__",
    "__ge__", "__gt__", "__le__", "__lt__",
    "add", "clear", "copy", "difference", "difference_update", "discard",
    "intersection", "intersection_update", "isdisjoint", "issubset",
    "issuperset", "pop", "remove", "symmetric_difference",
    "symmetric_difference_update", "union", "update",
)

# Built at runtime (MakeProxyType): Any for type checkers, as _BaseDictProxy.
BaseListProxy: Any = MakeProxyType(
    "BaseListProxy", _merged(_std_proxies.BaseListProxy._exposed_, _LIST_ADDED_314))


class ListProxy(BaseListProxy):
    def __iadd__(self, value):
        self._callmethod("extend", (value,))
        return self

    def __imul__(self, value):
        self._callmethod("__imul__", (value,))
        return self

    __class_getitem__: Any = classmethod(types.GenericAlias)   # 3.13


_BaseDictProxy: Any = MakeProxyType(
    "_BaseDictProxy", _merged(_std_proxies.DictProxy._exposed_, _DICT_ADDED_314))
_BaseDictProxy._method_to_typeid_ = dict(_std_proxies.DictProxy._method_to_typeid_)


class DictProxy(_BaseDictProxy):
    def __ior__(self, value):
        # The referent's __ior__ returns the referent, which would come back
        # as a copy: ``d |= x`` must leave ``d`` the proxy.
        self._callmethod("__ior__", (value,))
        return self

    __class_getitem__: Any = classmethod(types.GenericAlias)   # 3.13


_BaseSetProxy: Any = MakeProxyType("_BaseSetProxy", _merged(
    getattr(getattr(_std, "SetProxy", None), "_exposed_", ()), _SET_EXPOSED_314))


class SetProxy(_BaseSetProxy):
    """Proxy of a managed ``set`` (``SyncManager.set()``, Python 3.14)."""

    # In-place operators return the proxy, not a copy of the referent.
    def __ior__(self, value):
        self._callmethod("__ior__", (value,))
        return self

    def __iand__(self, value):
        self._callmethod("__iand__", (value,))
        return self

    def __ixor__(self, value):
        self._callmethod("__ixor__", (value,))
        return self

    def __isub__(self, value):
        self._callmethod("__isub__", (value,))
        return self

    __class_getitem__: Any = classmethod(types.GenericAlias)


# As 3.14 registers them (3.14 registers the set proxy as a MutableMapping,
# gh-142740; a MutableSet is what it is).
collections.abc.MutableSequence.register(BaseListProxy)
collections.abc.MutableMapping.register(_BaseDictProxy)
collections.abc.MutableSet.register(_BaseSetProxy)

ArrayProxy: Any = MakeProxyType("ArrayProxy", _std_proxies.ArrayProxy._exposed_)

BasePoolProxy: Any = MakeProxyType("PoolProxy", _std_proxies.BasePoolProxy._exposed_)
BasePoolProxy._method_to_typeid_ = dict(_std_proxies.BasePoolProxy._method_to_typeid_)


class PoolProxy(BasePoolProxy):
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()
