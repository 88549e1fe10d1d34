"""``polyproc.dummy``: the stdlib's ``multiprocessing.dummy`` (threads behind
the multiprocessing API), reused as it is."""
import multiprocessing.dummy as _std
from multiprocessing.dummy import *  # noqa: F403
from typing import Any

__all__ = list(_std.__all__)


def __getattr__(name: str) -> Any:
    return getattr(_std, name)
