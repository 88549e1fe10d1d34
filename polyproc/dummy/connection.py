"""``polyproc.dummy.connection``: the stdlib's, reused as it is."""
import multiprocessing.dummy.connection as _std
from multiprocessing.dummy.connection import *  # noqa: F403
from typing import Any

__all__ = list(_std.__all__)


def __getattr__(name: str) -> Any:
    return getattr(_std, name)
