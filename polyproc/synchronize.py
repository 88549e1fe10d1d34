"""``polyproc.synchronize``: the stdlib's ``multiprocessing.synchronize``, reused.

The stdlib's implementation is correct for polyproc's purposes, so this
module re-exports it (every public name, and any other attribute through
module ``__getattr__``) rather than copying it.  Code written as
``from multiprocessing.synchronize import X`` works as ``from polyproc.synchronize import X``.

One addition, for Pythons before 3.14: ``locked()`` on ``Lock``, ``RLock``,
``Semaphore`` and ``BoundedSemaphore`` (Python 3.14, gh-115942 and
gh-132561: whether the semaphore underneath is at zero, that is, held by
anyone).  The classes below are the stdlib's with that method, and
polyproc's contexts make them; from 3.14 on they are the stdlib's own.
"""
import multiprocessing.synchronize as _std
import sys
# The stdlib's __all__, imported by name rather than with a star, so that
# type checkers see the classes below (with locked()), not the stdlib's.
from multiprocessing.synchronize import Condition as Condition
from multiprocessing.synchronize import Event as Event
from typing import Any

__all__ = list(getattr(_std, "__all__", ()))

if sys.version_info >= (3, 14):
    from multiprocessing.synchronize import BoundedSemaphore as BoundedSemaphore
    from multiprocessing.synchronize import Lock as Lock
    from multiprocessing.synchronize import RLock as RLock
    from multiprocessing.synchronize import Semaphore as Semaphore
else:
    class _Locked:
        _semlock: Any

        def locked(self) -> bool:
            """Whether the lock is held (by any process or thread);
            for a semaphore, whether its value is zero."""
            return bool(self._semlock._is_zero())

    class Lock(_Locked, _std.Lock):
        __doc__ = _std.Lock.__doc__

    class RLock(_Locked, _std.RLock):
        __doc__ = _std.RLock.__doc__

    class Semaphore(_Locked, _std.Semaphore):
        __doc__ = _std.Semaphore.__doc__

    class BoundedSemaphore(_Locked, _std.BoundedSemaphore):
        __doc__ = _std.BoundedSemaphore.__doc__


def __getattr__(name: str) -> Any:
    return getattr(_std, name)
