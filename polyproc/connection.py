"""``polyproc.connection``: the stdlib's ``multiprocessing.connection``, with zero-copy ``send``.

Every public name of the stdlib module is here (re-exported, the rest
reachable through module ``__getattr__``); ``Connection``, ``Pipe``,
``Listener`` and ``Client`` are polyproc's, whose ``send``/``recv`` move
large buffers through shared memory.  The implementation is in
``polyproc/_transport/connection.py``; this module only re-exports.
"""
from __future__ import annotations

import multiprocessing.connection as _std
from multiprocessing.connection import *  # noqa: F401,F403

from ._transport.connection import Client, Connection, Listener, Pipe

__all__ = list(getattr(_std, "__all__", ()))


def __getattr__(name: str):
    return getattr(_std, name)
