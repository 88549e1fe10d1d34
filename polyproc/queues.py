"""``polyproc.queues`` (placeholder: the stdlib's until polyproc's own lands)."""
import multiprocessing.queues as _std
from multiprocessing.queues import *  # noqa: F401,F403

__all__ = list(getattr(_std, "__all__", ()))


def __getattr__(name: str):
    return getattr(_std, name)
