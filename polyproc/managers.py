"""``polyproc.managers``: shared objects in a server process, local or remote.

The public face of the managers; the machinery lives in private modules,
one job each (see docs/managers.md):

* ``_managers.wire``: sockets, the HMAC-SHA256 handshake, bounded frames,
  the typed messages;
* ``_managers.server``: the server that keeps the objects and runs calls;
* ``_managers.client``: a process's connections to a server;
* ``_managers.proxy``: ``BaseProxy`` and the stdlib's proxy types;
* ``_managers.manager``: ``BaseManager``, ``SyncManager``, ``SharedMemoryManager``.

Everything in ``multiprocessing.managers.__all__`` is here with the same
meaning, plus the other names stdlib code reaches for (``AutoProxy``,
``NamespaceProxy``, ``Server``, ``RemoteError``, ...).
"""
from __future__ import annotations

from ._exceptions import RemoteError
from ._managers.manager import (Array, BaseManager, Namespace, SharedMemoryManager,
                       SharedMemoryServer, State, SyncManager, Value)
from ._managers.proxy import (AcquirerProxy, ArrayProxy, AutoProxy,
                             BarrierProxy, BaseListProxy, BasePoolProxy,
                             BaseProxy, ConditionProxy, DictProxy, EventProxy,
                             IteratorProxy, ListProxy, MakeProxyType,
                             NamespaceProxy, PoolProxy, RebuildProxy,
                             SetProxy, Token, ValueProxy)
from ._managers.server import Server
from ._public import fixup_module_metadata

__all__ = ["BaseManager", "SyncManager", "BaseProxy", "Token",
           "SharedMemoryManager"]

# Other public names of ``multiprocessing.managers``, not in its __all__.
_MORE = [
    "AcquirerProxy", "Array", "ArrayProxy", "AutoProxy", "BarrierProxy",
    "BaseListProxy", "BasePoolProxy", "ConditionProxy", "DictProxy",
    "EventProxy", "IteratorProxy", "ListProxy", "MakeProxyType", "Namespace",
    "NamespaceProxy", "PoolProxy", "RebuildProxy", "RemoteError", "Server",
    "SharedMemoryServer", "SetProxy", "State", "Value", "ValueProxy",
]

fixup_module_metadata(__name__, {name: globals()[name]
                                 for name in __all__ + _MORE
                                 if globals()[name].__module__.startswith("polyproc._managers.")})
