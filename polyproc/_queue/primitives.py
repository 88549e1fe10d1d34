"""The OS pieces under polyproc's queues: named shared memory, a robust lock, a futex.

Why these three and nothing else
--------------------------------
A polyproc queue must be usable from any process that gets hold of it,
including processes started long after the queue was made and Pool workers
that receive it pickled inside a task.  So everything it is made of must be
reachable *by name*, not only through inherited file descriptors:

* **Named shared memory** (a file under ``/dev/shm``, opened with the same
  ``shm_open`` the stdlib's ``multiprocessing.shared_memory`` uses).  Any
  process that knows the name maps it.  The creating process is its owner:
  it registers the names with the stdlib's ``resource_tracker`` (so that
  they are removed even if the owner is SIGKILLed) and unlinks them when
  its queue object goes away.  Other processes only map; they never
  register, which avoids the stdlib ``SharedMemory`` bug where an attaching
  process unlinks a segment it does not own (gh-82300).

* **A robust, process-shared pthread mutex** living *inside* the shared
  memory, called through ``ctypes``.  The stdlib's ``multiprocessing.Lock``
  is a POSIX semaphore: when its holder is SIGKILLed it stays taken and
  every other process hangs.  A robust mutex is released by the kernel when
  its owner dies, and the next process to lock it is told so
  (``EOWNERDEAD``), so it can repair what the dead owner left half done
  (see ``_queue.ring``) and go on.  Uncontended it costs one atomic
  instruction and no system call (about 0.4 µs per lock/unlock pair from
  Python, against 0.65 µs for ``fcntl.lockf``, the other option that the
  kernel releases on death).  It also excludes threads of one process from
  each other, so no extra ``threading.Lock`` is needed.

* **A futex** (``syscall(SYS_futex)``), also in the shared memory, to sleep
  until another process says something changed.  It is addressed by the
  shared page, so it works for any process that maps the segment, with no
  per-waiter registration that a dead process could leave behind, and
  ``FUTEX_WAIT`` honours a relative timeout to well under a millisecond.

All of this is pure Python over libc (no compiled extension), for x86-64
Linux: ``queues.py`` falls back to the stdlib's queues elsewhere.
``ctypes.PyDLL`` (keeps the GIL) is used for calls that never block, where
releasing and re-taking the GIL would cost more than the call;
``ctypes.CDLL`` (releases the GIL) for calls that may sleep.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time

from .. import _platform

__all__ = [
    "AVAILABLE", "MUTEX_SIZE", "mutex_init", "mutex_acquire", "mutex_try",
    "mutex_release", "trylock", "unlock", "recover", "unlock_error", "EOWNERDEAD",
    "futex_wait", "futex_wake", "create_segment", "open_segment",
    "unlink_segment", "address_of", "reserve",
]

# futex(2)'s system call number.  x86-64 only: the ring's "publish last"
# protocol needs the stores of one process to be seen in order (x86's TSO;
# see ring.py), which weakly ordered CPUs (arm64: 98) do not promise
# without barriers that Python cannot issue.
_SYS_FUTEX = {"x86_64": 202}.get(_platform.MACHINE)
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_INT_MAX = 2**31 - 1

AVAILABLE = _platform.ORDERED_SHARED_MEMORY and _SYS_FUTEX is not None

MUTEX_SIZE = 64          # bytes reserved per pthread_mutex_t (40 on x86-64, 48 on arm64)
_PTHREAD_PROCESS_SHARED = 1
_PTHREAD_MUTEX_ROBUST = 1

# A blocked lock or futex wait is cut into slices this long, so that Ctrl-C
# is seen promptly and a wake-up lost to a dead process costs at most this.
WAIT_SLICE = 0.1
LOCK_YIELDS = 10
_yield = os.sched_yield


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _timespec(seconds: float) -> _Timespec:
    sec = int(seconds)
    return _Timespec(sec, int((seconds - sec) * 1e9))


if AVAILABLE:
    _libc = ctypes.CDLL(None, use_errno=True)      # releases the GIL
    # Keeps the GIL (non-blocking calls).  Without use_errno: every call of
    # it reports failure in its return value (the pthread calls return the
    # error number; futex_wake ignores failure), and use_errno costs each
    # call two errno swaps through the thread state's dict, about 10% of a
    # lock/unlock pair.
    _plibc = ctypes.PyDLL(None)
    _vp = ctypes.c_void_p

    def _fn(lib, name, argtypes, restype=ctypes.c_int):
        f = getattr(lib, name)
        f.argtypes = argtypes
        f.restype = restype
        return f

    class _IntFunction(ctypes._CFuncPtr):  # type: ignore[name-defined]
        """A GIL-keeping C function returning a C int, converted the cheap way.

        A function of ``PyDLL`` has the restype ``c_int``, and ctypes
        converts that result through a linear search of its type table on
        every call (about 250 instructions, 10% of a call).  A function
        type with no ``_restype_`` at all gets the built-in int conversion.
        """
        _flags_ = ctypes._FUNCFLAG_CDECL | ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]

    def _int_fn(name: str) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
        f = _IntFunction((name, _plibc))
        f.argtypes = [_vp]
        return f

    _mutexattr_init = _fn(_libc, "pthread_mutexattr_init", [_vp])
    _mutexattr_setpshared = _fn(_libc, "pthread_mutexattr_setpshared", [_vp, ctypes.c_int])
    _mutexattr_setrobust = _fn(_libc, "pthread_mutexattr_setrobust", [_vp, ctypes.c_int])
    _mutex_init = _fn(_libc, "pthread_mutex_init", [_vp, _vp])
    _mutex_trylock = _int_fn("pthread_mutex_trylock")
    _mutex_timedlock = _fn(_libc, "pthread_mutex_timedlock", [_vp, ctypes.POINTER(_Timespec)])
    _mutex_unlock = _int_fn("pthread_mutex_unlock")
    _mutex_consistent = _int_fn("pthread_mutex_consistent")
    _futex_sleep = _fn(_libc, "syscall", [ctypes.c_long, _vp, ctypes.c_int, ctypes.c_uint,
                                          ctypes.POINTER(_Timespec), _vp, ctypes.c_int],
                       ctypes.c_long)
    _futex_poke = _fn(_plibc, "syscall", [ctypes.c_long, _vp, ctypes.c_int, ctypes.c_int,
                                          _vp, _vp, ctypes.c_int], ctypes.c_long)

    # The bare C calls, for the queue's fast paths, where a Python function
    # around each of them would show in msgs/s: ``trylock(addr)`` returns 0
    # (locked), EBUSY, or EOWNERDEAD (locked, its previous owner died: call
    # ``recover(addr)`` and repair); ``unlock(addr)`` returns 0 or an errno
    # (see ``unlock_error``).
    trylock = _mutex_trylock
    unlock = _mutex_unlock
    recover = _mutex_consistent
else:  # pragma: no cover - queues.py uses the stdlib's queues there
    def _unavailable(addr: int) -> int:
        raise OSError(errno.ENOSYS, "polyproc's shared-memory queues need x86-64 Linux")

    trylock = unlock = recover = _unavailable

EOWNERDEAD = errno.EOWNERDEAD


def address_of(buffer: mmap.mmap, offset: int = 0) -> int:
    """The address of byte *offset* of a mapping (valid while it stays mapped)."""
    # from_buffer exports the mmap for as long as the c_char lives; it is
    # dropped at once.  The mapping itself is never closed explicitly (only
    # freed with its last reference), so the address stays valid.
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer)) + offset


# ---------------------------------------------------------------- mutex

def mutex_init(addr: int) -> None:
    """Initialise a robust, process-shared mutex at *addr* (in shared memory)."""
    attr = ctypes.create_string_buffer(64)
    for rc in (_mutexattr_init(attr),
               _mutexattr_setpshared(attr, _PTHREAD_PROCESS_SHARED),
               _mutexattr_setrobust(attr, _PTHREAD_MUTEX_ROBUST),
               _mutex_init(addr, attr)):
        if rc:
            raise OSError(rc, f"cannot initialise a shared mutex: {os.strerror(rc)}")


def mutex_acquire(addr: int, deadline: float | None) -> int | None:
    """Lock the mutex at *addr*; block until *deadline* (``time.monotonic``).

    Returns 0 when locked normally, 1 when locked after its previous owner
    died holding it (the caller must repair the state the lock protects
    before it releases it), ``None`` when *deadline* passed first.
    """
    rc = _mutex_trylock(addr)
    if rc == 0:
        return 0
    # Busy: the holder keeps it for microseconds, unless it was preempted
    # while holding it (more processes than cores).  Giving our CPU away a
    # few times lets it finish, for far less than a futex sleep and wake-up.
    for _ in range(LOCK_YIELDS):
        if rc != errno.EBUSY:
            break
        _yield()
        rc = _mutex_trylock(addr)
        if rc == 0:
            return 0
    while True:
        if rc == errno.EOWNERDEAD:
            _mutex_consistent(addr)
            return 1
        if rc not in (errno.EBUSY, errno.ETIMEDOUT):
            raise OSError(rc, f"cannot lock a queue's shared mutex: {os.strerror(rc)}")
        now = time.monotonic()
        if deadline is None:
            wait = WAIT_SLICE
        else:
            wait = min(deadline - now, WAIT_SLICE)
            if wait <= 0:
                rc = _mutex_trylock(addr)
                if rc == 0:
                    return 0
                if rc == errno.EOWNERDEAD:
                    continue
                return None
        # timedlock takes an absolute CLOCK_REALTIME time; a slice is short,
        # so a wall-clock jump can only shorten or lengthen one slice.
        rc = _mutex_timedlock(addr, ctypes.byref(_timespec(time.time() + wait)))
        if rc == 0:
            return 0


def mutex_try(addr: int) -> int | None:
    """Lock the mutex at *addr* if that needs no waiting.

    The fast path of every queue operation.  Returns what ``mutex_acquire``
    returns (0 locked, 1 locked after its owner died), ``None`` when busy.
    """
    rc = _mutex_trylock(addr)
    if rc == 0:
        return 0
    if rc == errno.EOWNERDEAD:
        _mutex_consistent(addr)
        return 1
    return None


def mutex_release(addr: int) -> None:
    rc = _mutex_unlock(addr)
    if rc:
        raise unlock_error(rc)


def unlock_error(rc: int) -> OSError:
    """The error for an unlock that returned *rc* (not the owner: a bug)."""
    return OSError(rc, f"cannot unlock a queue's shared mutex: {os.strerror(rc)}")


# ---------------------------------------------------------------- futex

def futex_wait(addr: int, expected: int, timeout: float) -> None:
    """Sleep while the u32 at *addr* equals *expected*, at most *timeout* s.

    Returns on a wake-up, a change of the value, a signal or the timeout;
    callers re-check their condition in every case.
    """
    if timeout <= 0:
        return
    _futex_sleep(_SYS_FUTEX, addr, _FUTEX_WAIT, expected,
                 ctypes.byref(_timespec(timeout)), None, 0)


def futex_wake(addr: int) -> int:
    """Wake every process sleeping in ``futex_wait`` on *addr*; return how many."""
    return max(0, _futex_poke(_SYS_FUTEX, addr, _FUTEX_WAKE, _INT_MAX, None, None, 0))


# ---------------------------------------------------------------- segments

def create_segment(name: str, size: int) -> tuple[int, mmap.mmap]:
    """Create the shared-memory file *name* (leading ``/``) of *size* bytes."""
    import _posixshmem
    fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
    try:
        reserve(fd, size)
        return fd, mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        _posixshmem.shm_unlink(name)
        raise


def reserve(fd: int, size: int) -> None:
    """Make the shared-memory file *fd* *size* bytes long, memory included.

    ``posix_fallocate`` takes the pages from ``/dev/shm`` now: when it is
    full this raises ``OSError(ENOSPC)`` here, at the call that asked for
    the memory.  With a plain ``ftruncate`` the file would be sparse and
    the first write into a page that cannot be had kills the process with
    SIGBUS (the default ``/dev/shm`` of a Docker container is 64 MB).
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.ENOMEM):
            raise
        raise OSError(error.errno,
                      f"not enough shared memory for a {size:,}-byte queue buffer: "
                      f"/dev/shm is full or too small ({error.strerror}). Consume "
                      "items sooner, bound the queue (maxsize) or enlarge /dev/shm."
                      ) from None


def open_segment(name: str) -> int:
    """Open an existing shared-memory file; ``FileNotFoundError`` if it is gone."""
    import _posixshmem
    return _posixshmem.shm_open(name, os.O_RDWR, mode=0o600)


def unlink_segment(name: str) -> None:
    import _posixshmem
    try:
        _posixshmem.shm_unlink(name)
    except FileNotFoundError:
        pass
