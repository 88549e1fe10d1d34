"""``polyproc.connection``: the stdlib's ``multiprocessing.connection``, with zero-copy ``send``.

Every public name of the stdlib module is here (re-exported, the rest
reachable through module ``__getattr__``); ``Connection``, ``Pipe``,
``Listener`` and ``Client`` are polyproc's, whose ``send``/``recv`` move
large buffers through shared memory.  The implementation is in
``polyproc/_transport/connection.py``; this module only re-exports.
"""
from __future__ import annotations

import multiprocessing.connection as _std
# The stdlib's ``__all__`` is Client, Listener, Pipe and wait: the first
# three are polyproc's (below), ``wait`` is reused.  Not a star import, so
# that type checkers see polyproc's Pipe, Listener and Client.
from multiprocessing.connection import wait as wait
from typing import Any

# ``X as X``: re-exported, for type checkers too (``__all__`` here is computed).
from ._transport.connection import Client as Client
from ._transport.connection import Connection as Connection
from ._transport.connection import Listener as Listener
from ._transport.connection import Pipe as Pipe

__all__ = list(getattr(_std, "__all__", ()))


def __getattr__(name: str) -> Any:
    return getattr(_std, name)
