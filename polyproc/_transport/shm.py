"""Shared-memory segments that carry one large buffer from one process to another.

One segment per buffer, used exactly once:

* The sender creates a fresh POSIX shared-memory segment, copies the buffer
  into it (the only copy on the whole path) and puts a ``SegmentRef`` (name
  and size) in the payload.
* The receiver opens the segment, *unlinks it at once* and maps it.  The
  mapping stays valid after the unlink, so the receiver's objects (a NumPy
  array built on the buffer, a ``memoryview``) use the memory in place; the
  kernel frees it when the last mapping goes away.  Nothing is left in
  ``/dev/shm`` after a payload is received, however long the array lives.

Reused from the stdlib: ``_posixshmem.shm_open``/``shm_unlink``, the
C functions behind ``multiprocessing.shared_memory``.  ``SharedMemory``
itself is not used: it registers every segment it creates *or opens* with
the stdlib's ``resource_tracker``, which then unlinks segments still in
flight and warns about them (see ``tracker.py`` for polyproc's tracker).

Why ``os.pwrite`` and not a store through a mapping: when ``/dev/shm`` is
full, a store into a mapped page that cannot be allocated kills the process
with SIGBUS; ``pwrite`` fails with ``ENOSPC`` instead, which ``create``
turns into a clean ``OSError`` so that the caller can fall back to the pipe.
It is also faster here: the kernel copies straight into freshly allocated
pages, without a page fault per 4 KiB.
"""
from __future__ import annotations

import mmap
import os
import secrets
from typing import NamedTuple

from . import tracker
from .._exceptions import SegmentGoneError

try:
    import _posixshmem
except ImportError:  # Windows: no POSIX shared memory; callers use the pipe
    _posixshmem = None

__all__ = ["SegmentRef", "SegmentGoneError", "create", "create_recyclable",
           "open_existing", "attach", "unlink", "session_prefix"]


class SegmentRef(NamedTuple):
    """What a payload carries about one segment: enough to find and check it."""
    name: str   # POSIX name, with its leading "/"
    size: int   # bytes of data in the segment
    # A one-shot segment (False) holds just the data and is unlinked by its
    # receiver; a recycled one (True, see _transport/shm_cache.py) starts with a
    # header page and goes back to its sender when the receiver is done.
    recycled: bool = False
    generation: int = 0  # which filling of a recycled segment this payload is


def session_prefix() -> str:
    """File names in ``/dev/shm`` of this session's segments start with this."""
    return tracker.session().prefix


def _new_name(recycled: bool = False) -> str:
    # pp<session token>_<creator pid>_[r]<random>: at most 28 characters,
    # under macOS's 31.  The session part lets the tracker and tests find
    # them; the creator pid and the "r" of recycled segments let the
    # tracker deal with segments whose creator died (shm_cache.sweep).
    kind = "r" if recycled else ""
    return f"/{session_prefix()}{os.getpid():x}_{kind}{secrets.token_hex(4)}"


def creator_pid(name: str) -> int | None:
    """The pid of the process that created segment *name* (None if not ours)."""
    try:
        return int(name.rsplit("_", 2)[1], 16)
    except (IndexError, ValueError):
        return None


def is_recyclable_name(name: str) -> bool:
    return name.rsplit("_", 1)[-1].startswith("r")


def _open_new(name: str) -> int:
    """Create segment *name* (it must not exist); returns a file descriptor."""
    if _posixshmem is None:
        raise OSError("POSIX shared memory is not available on this platform")
    return _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)


def _write_all(fd: int, data: memoryview, at: int = 0) -> None:
    done, size = 0, data.nbytes
    while done < size:
        done += os.pwrite(fd, data[done:], at + done)


def _open_registered(name: str) -> int:
    """Register *name* with the tracker, then create the segment.

    In that order, so that a sender killed in between leaves nothing the
    tracker does not know about; a failed create takes the name back.
    """
    tracker.register(name)
    try:
        return _open_new(name)
    except BaseException:
        tracker.unregister(name)
        raise


def create(data: memoryview) -> SegmentRef:
    """Copy *data* (a C-contiguous byte view) into a new segment.

    The segment is registered with the session's tracker *before* it is
    created, so that a sender killed at any point leaves nothing the tracker
    does not know about.  Raises ``OSError`` (``ENOSPC`` when ``/dev/shm``
    is full or too small, ``EMFILE``, or a tracker that cannot be started),
    after removing whatever was created.
    """
    name = _new_name()
    fd = _open_registered(name)
    try:
        _write_all(fd, data)
    except BaseException:
        unlink(name)
        raise
    finally:
        os.close(fd)
    return SegmentRef(name, data.nbytes)


def create_recyclable(data: memoryview, header: int) -> tuple[SegmentRef, mmap.mmap]:
    """Like ``create``, with *header* zero bytes before the data.

    Returns the reference and the sender's own shared mapping of the whole
    segment, through which ``_transport.shm_cache`` refills it later.
    """
    name = _new_name(recycled=True)
    fd = _open_registered(name)
    try:
        _write_all(fd, memoryview(bytes(header)), 0)
        _write_all(fd, data, header)
        m = mmap.mmap(fd, header + data.nbytes, flags=mmap.MAP_SHARED)
    except BaseException:
        unlink(name)
        raise
    finally:
        os.close(fd)
    return SegmentRef(name, data.nbytes, True), m


def open_existing(name: str) -> int:
    """Open segment *name* read-write; raises ``SegmentGoneError`` if missing."""
    if _posixshmem is None:
        raise OSError("POSIX shared memory is not available on this platform")
    try:
        return _posixshmem.shm_open(name, os.O_RDWR, 0o600)
    except FileNotFoundError:
        raise SegmentGoneError(name) from None


def attach(ref: SegmentRef) -> memoryview:
    """Open, unlink and map the one-shot segment *ref*; returns a writable view.

    After this call nothing is left in ``/dev/shm``: the memory lives as
    long as the returned view (and every object built on it).  The mapping
    is private (``MAP_PRIVATE``), so it behaves like memory the receiver
    owns: after a fork, parent and child each see their own writes only.
    Raises ``SegmentGoneError`` when the segment does not exist any more,
    and ``ValueError`` when it is not the size the payload says.
    """
    fd = open_existing(ref.name)
    try:
        unlink(ref.name)
        size = os.fstat(fd).st_size
        if size != ref.size:
            # Mapping past the end of the file would SIGBUS on access.
            raise ValueError(f"shared-memory segment {ref.name} holds {size} "
                             f"bytes, the payload says {ref.size}")
        return memoryview(mmap.mmap(fd, ref.size, flags=mmap.MAP_PRIVATE,
                                    prot=mmap.PROT_READ | mmap.PROT_WRITE))
    finally:
        os.close(fd)


def unlink(name: str) -> None:
    """Remove segment *name* and tell the tracker; a missing segment is fine."""
    if _posixshmem is not None:
        try:
            _posixshmem.shm_unlink(name)
        except FileNotFoundError:
            pass
    tracker.unregister(name)
