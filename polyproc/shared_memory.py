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
import inspect as _inspect
import multiprocessing.shared_memory as _std
from multiprocessing.shared_memory import *  # noqa: F401,F403

__all__ = list(getattr(_std, "__all__", ()))

if "track" not in _inspect.signature(_std.SharedMemory).parameters:
    from multiprocessing import resource_tracker as _tracker

    class SharedMemory(_std.SharedMemory):  # type: ignore[no-redef]
        __doc__ = _std.SharedMemory.__doc__
        _track = True

        def __init__(self, name=None, create=False, size=0, *, track=True):
            super().__init__(name, create, size)
            # Before 3.13 the block is always registered: take it back.
            self._track = track
            if not track and _std._USE_POSIX:
                _tracker.unregister(self._name, "shared_memory")

        def unlink(self):
            if self._track or not _std._USE_POSIX:
                return super().unlink()
            if self._name:
                _std._posixshmem.shm_unlink(self._name)

del _inspect


def __getattr__(name: str):
    return getattr(_std, name)
