"""``polyproc.sharedctypes``: the stdlib's ``multiprocessing.sharedctypes``, reused as it is.

The stdlib's implementation is correct for polyproc's purposes, so this
module re-exports it (every public name, and any other attribute through
module ``__getattr__``) rather than copying it.  Code written as
``from multiprocessing.sharedctypes import X`` works as ``from polyproc.sharedctypes import X``.
"""
import multiprocessing.sharedctypes as _std
from multiprocessing.sharedctypes import *  # noqa: F403
from typing import Any

__all__ = list(getattr(_std, "__all__", ()))


def __getattr__(name: str) -> Any:
    return getattr(_std, name)
