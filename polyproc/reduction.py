"""``polyproc.reduction``: the stdlib's ``multiprocessing.reduction``, reused as it is.

The stdlib's implementation is correct for polyproc's purposes, so this
module re-exports it (every public name, and any other attribute through
module ``__getattr__``) rather than copying it.  Code written as
``from multiprocessing.reduction import X`` works as ``from polyproc.reduction import X``.
"""
import multiprocessing.reduction as _std
from multiprocessing.reduction import *  # noqa: F403
from typing import Any

__all__ = list(getattr(_std, "__all__", ()))


def __getattr__(name: str) -> Any:
    return getattr(_std, name)
