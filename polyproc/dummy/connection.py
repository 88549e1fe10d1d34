"""``polyproc.dummy.connection``: the stdlib's, reused as it is."""
import multiprocessing.dummy.connection as _std
from multiprocessing.dummy.connection import *  # noqa: F401,F403

__all__ = list(_std.__all__)


def __getattr__(name: str):
    return getattr(_std, name)
