"""``polyproc.synchronize``: the stdlib's ``multiprocessing.synchronize``, reused as it is.

The stdlib's implementation is correct for polyproc's purposes, so this
module re-exports it (every public name, and any other attribute through
module ``__getattr__``) rather than copying it.  Code written as
``from multiprocessing.synchronize import X`` works as ``from polyproc.synchronize import X``.
"""
import multiprocessing.synchronize as _std
from multiprocessing.synchronize import *  # noqa: F401,F403

__all__ = list(getattr(_std, "__all__", ()))


def __getattr__(name: str):
    return getattr(_std, name)
