"""``polyproc.shared_memory``: the stdlib's ``multiprocessing.shared_memory``, reused.

The stdlib's implementation is correct for polyproc's purposes, so this
module re-exports it (every public name, and any other attribute through
module ``__getattr__``) rather than copying it.  Code written as
``from multiprocessing.shared_memory import X`` works as ``from polyproc.shared_memory import X``.

One addition, for Pythons before 3.13: ``SharedMemory(..., track=False)``
(Python 3.13, gh-82300): the block is not registered with the resource
tracker, which therefore never unlinks it when the processes that used it
exit, and ``unlink()`` does not tell the tracker.  From 3.13 on the class
is the stdlib's own.
"""
import multiprocessing.shared_memory as _std
import sys
# The stdlib's __all__, imported by name rather than with a star, so that
# type checkers see the SharedMemory below (with track=), not the stdlib's.
from multiprocessing.shared_memory import ShareableList as ShareableList
from typing import Any

__all__ = list(getattr(_std, "__all__", ()))

if sys.version_info >= (3, 13):
    from multiprocessing.shared_memory import SharedMemory as SharedMemory
else:
    from multiprocessing import resource_tracker as _tracker

    # The stdlib module's private names used below (not in typeshed).
    _std_private: Any = _std

    class SharedMemory(_std.SharedMemory):
        __doc__ = _std.SharedMemory.__doc__
        _track = True
        _name: str   # the stdlib's, set by its __init__

        def __init__(self, name: str | None = None, create: bool = False,
                     size: int = 0, *, track: bool = True) -> None:
            super().__init__(name, create, size)
            # Before 3.13 the block is always registered: take it back.
            self._track = track
            if not track and _std_private._USE_POSIX:
                _tracker.unregister(self._name, "shared_memory")

        def unlink(self) -> None:
            if self._track or not _std_private._USE_POSIX:
                return super().unlink()
            if self._name:
                _std_private._posixshmem.shm_unlink(self._name)


def __getattr__(name: str) -> Any:
    return getattr(_std, name)
