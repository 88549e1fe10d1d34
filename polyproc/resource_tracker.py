"""``polyproc.resource_tracker``: the stdlib's ``multiprocessing.resource_tracker``, reused.

The stdlib's implementation is correct for polyproc's purposes, so this
module re-exports it (every public name, and any other attribute through
module ``__getattr__``) rather than copying it.  Code written as
``from multiprocessing.resource_tracker import X`` works as
``from polyproc.resource_tracker import X``.
"""
import multiprocessing.resource_tracker as _std
from multiprocessing.resource_tracker import *  # noqa: F403
from typing import Any

__all__ = list(getattr(_std, "__all__", ()))


def __getattr__(name: str) -> Any:
    return getattr(_std, name)
