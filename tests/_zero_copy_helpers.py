"""Spawn-safe helpers for tests/test_zero_copy*.py and tests/test_serialization.py."""
from __future__ import annotations

import os
import pickle

import numpy as np

from polyproc._transport import serialization as _serialization
from polyproc._transport import shm as _shm

MiB = 1 << 20


def our_segments(prefix: str | None = None) -> list[str]:
    """Names in /dev/shm of the given session (this process's by default)."""
    prefix = prefix or _shm.session_prefix()
    return sorted(f for f in os.listdir("/dev/shm") if f.startswith(prefix))


def wait_for_segments(expected: list[str], timeout: float,
                      prefix: str | None = None) -> None:
    """Wait until this session's segments are among *expected*; bounded.

    Segments of senders that died are the tracker's to unlink, on its next
    sweep (every second): there is no event to wait on, so this polls.
    Among, not equal: a segment in *expected* (taken before a test) may be
    one that an earlier test's killed sender left, which that sweep removes
    meanwhile.
    """
    import time
    deadline = time.monotonic() + timeout
    while not set(our_segments(prefix)) <= set(expected):
        if time.monotonic() > deadline:
            left = sorted(set(our_segments(prefix)) - set(expected))
            assert not left, f"segments left over: {left}"
        time.sleep(0.05)


def wait_for_no_new_segments(before: list[str], timeout: float) -> None:
    """Wait until none of this session's segments is missing from *before*; bounded.

    For a check after each test of what the test itself left: segments
    that earlier tests left to the tracker (a killed worker's) may go away
    meanwhile, on its sweep, so an exact comparison with *before* fails
    by chance.  A new segment must be gone within *timeout* (the tracker
    sweeps those of senders that died every second).
    """
    import time
    deadline = time.monotonic() + timeout
    while not set(our_segments()) <= set(before):
        if time.monotonic() > deadline:
            assert sorted(set(our_segments()) - set(before)) == [], "segments left"
        time.sleep(0.05)


def pattern(nbytes: int, seed: int = 0) -> np.ndarray:
    """A uint8 array whose content depends on *seed* (cheap to make and check)."""
    return (np.arange(nbytes, dtype=np.uint64) * 2654435761 + seed).astype(np.uint8)


class Blob:
    """A user type that supports out-of-band pickling through PickleBuffer."""

    def __init__(self, data: bytearray):
        self.data = data

    def __reduce_ex__(self, protocol):
        if protocol >= 5:
            return type(self)._rebuild, (pickle.PickleBuffer(self.data),)
        return type(self)._rebuild, (bytes(self.data),)

    @classmethod
    def _rebuild(cls, obj):
        view = memoryview(obj)
        return cls(view if not view.readonly else bytearray(view))


# -- Process targets -------------------------------------------------------

def send_array_and_exit(conn, nbytes: int, seed: int) -> None:
    """Send an array and exit at once: its segment must outlive this process."""
    conn.send(pattern(nbytes, seed))
    conn.close()
    os._exit(0)


def receive_and_check(conn, nbytes: int, seed: int) -> None:
    """Receive an array; reply whether it is the expected one, then whether
    it stayed unchanged after the sender modified its own copy."""
    arr = conn.recv()
    conn.send(bool(np.array_equal(arr, pattern(nbytes, seed))))
    conn.recv()  # the sender has modified its array now
    conn.send(bool(np.array_equal(arr, pattern(nbytes, seed))))


def echo(conn) -> None:
    """Send back every object received until None."""
    while True:
        obj = conn.recv()
        if obj is None:
            return
        conn.send(obj)


def queue_put_and_exit(q, nbytes: int, seed: int) -> None:
    q.put(pattern(nbytes, seed))
    os._exit(0)


def array_checksum(arr) -> int:
    return int(np.asarray(arr, dtype=np.uint64).sum())


def make_pattern(args) -> np.ndarray:
    nbytes, seed = args
    return pattern(nbytes, seed)


def receive_then_block(arr, started) -> None:
    """A pool task that holds its (zero-copy) argument until it is killed."""
    started.set()
    import threading
    threading.Event().wait(60)  # until SIGKILL (bounded all the same)


def never_read(conn, ready) -> None:
    """A consumer that never reads: it is killed with its data unread."""
    ready.set()
    import threading
    threading.Event().wait(60)


def dumps_payload(obj) -> bytes:
    return _serialization.dumps(obj)


def report_pid_then_block(arr, q) -> None:
    """A pool task: say which worker holds the argument, then wait to be killed."""
    q.put(os.getpid())
    import threading
    threading.Event().wait(60)


def check_inherited(arr, conn, nbytes: int, seed: int) -> None:
    """A fork child: is the array inherited from the parent still intact
    after the parent dropped its own and sent again?"""
    conn.recv()
    conn.send(bool(np.array_equal(arr, pattern(nbytes, seed))))


def send_array_then_block(conn, nbytes: int, seed: int) -> None:
    """Send an array, then wait to be killed (the sender dies uncleanly)."""
    conn.send(pattern(nbytes, seed))
    conn.recv()  # never comes: SIGKILL


def send_own_type_and_array(conn, nbytes: int, seed: int) -> None:
    """Report the class of the connection this child got, then send an array."""
    conn.send(f"{type(conn).__module__}.{type(conn).__qualname__}")
    conn.send(pattern(nbytes, seed))
    conn.close()


def buffer_cases(nbytes: int, seed: int) -> list:
    """One object of each buffer type the issue names, all above the threshold."""
    base = pattern(nbytes, seed)
    return [base, bytes(base), bytearray(base), memoryview(base),
            Blob(bytearray(base)), {"nested": [base, b"small"]}]


def same_case(a, b) -> bool:
    """Equality for the objects of buffer_cases, type included."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and bool(np.array_equal(a, b))
    if isinstance(a, memoryview):
        return a.format == b.format and a.tobytes() == b.tobytes()
    if isinstance(a, Blob):
        return bytes(a.data) == bytes(b.data)
    if isinstance(a, dict):
        return (bool(np.array_equal(a["nested"][0], b["nested"][0]))
                and a["nested"][1] == b["nested"][1])
    return a == b


def identity(obj):
    return obj


def queue_echo(q_in, q_out, count: int) -> None:
    for _ in range(count):
        q_out.put(q_in.get(timeout=30))


_filled: np.ndarray | None = None


def refill_and_return(value: int) -> np.ndarray:
    """A pool task that returns the same array object each time, refilled:
    earlier results the parent holds must not change."""
    global _filled
    if _filled is None:
        _filled = np.empty(4 * MiB, dtype=np.uint8)
    _filled[:] = value
    return _filled


def reuse_tracker_fd_then_send(path: str, conn) -> None:
    """Close the inherited tracker connection, put a file on its number,
    then send: the message must go to a new connection, not the file."""
    from polyproc._transport import tracker as _shm_tracker
    fd = _shm_tracker._fd
    os.close(fd)
    f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if f != fd:
        os.dup2(f, fd)
        os.close(f)
    conn.send(pattern(2 * MiB, 16))
    conn.send(os.fstat(fd).st_size)



# -- Pausing a pool worker at a chosen point of sending its result ------------

def pause_result_at(where: str, report, once, one_shot: bool = False) -> None:
    """Pool initializer: stop this worker where it holds a result segment
    that it has not sent yet, so that the test can SIGKILL it right there.

    *where* is ``"created"`` (a segment of the result exists, the payload
    is not complete: inside ``dumps``) or ``"dumped"`` (``dumps`` returned
    the payload, ``send_bytes`` has not run).  The worker puts
    ``(pid, segment names)`` on *report* and blocks; only the first worker
    to get there (the one that creates the file *once*) does.  *one_shot*
    makes the worker use one-shot segments (its recycling pool is "full").
    """
    import sys
    import threading

    from polyproc._transport import shm_cache as _shm_pool
    from polyproc._pool._backends.process import worker as _worker

    if one_shot:
        _shm_pool.CACHE_LIMIT = 0
    created = _serialization._new_segment.__code__
    dumped = _serialization.dumps.__code__
    flush = _worker._Worker.flush.__code__

    def names_at(frame, event, value):
        if event != "return":
            return None
        if where == "created" and frame.f_code is created:
            return [value.name]
        if (where == "dumped" and frame.f_code is dumped
                and frame.f_back.f_code is flush and value[:1] == b"\xff"):
            header = _serialization._read_header(value)
            return [ref.name for ref in header.buffers]
        return None

    def hook(frame, event, value):
        names = names_at(frame, event, value)
        if names is None:
            return
        sys.setprofile(None)
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # a replacement worker: let it work
        report.put((os.getpid(), names))
        threading.Event().wait(60)  # until SIGKILL (bounded all the same)

    sys.setprofile(hook)


def put_then_block(q, nbytes: int, seed: int, done) -> None:
    """Put an array on a queue, say so, then wait to be killed."""
    q.put(pattern(nbytes, seed))
    done.set()
    import threading
    threading.Event().wait(60)


def pid_and_pattern(args) -> tuple:
    return os.getpid(), make_pattern(args)


def segments_of(pid: int, prefix: str | None = None) -> list[str]:
    """This session's segments created by process *pid* (names with '/')."""
    return ["/" + n for n in our_segments(prefix)
            if _shm.creator_pid("/" + n) == pid]


def wait_until(predicate, timeout: float, what: str) -> float:
    """Poll *predicate* until true (bounded); returns the seconds it took.

    For the tracker's work, which has no event a test can wait on.
    """
    import time
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def exists(name: str) -> bool:
    return os.path.exists("/dev/shm" + name)


def orphaned(name: str) -> bool:
    """Has the tracker marked recycled segment *name* as its sender's orphan?"""
    from polyproc._transport import shm_cache as _shm_pool
    try:
        header = _shm_pool._map_header(name)
    except OSError:
        return False
    with header:
        return bool(_shm_pool._get(header, _shm_pool._ORPHANED))


def send_one_shot_and_recycled_then_block(conn, nbytes: int, seed: int, sent) -> None:
    """Send an array in a one-shot segment, another in a recycled one, say
    so, then wait to be killed."""
    from polyproc._transport import shm_cache as _shm_pool
    limit, _shm_pool.CACHE_LIMIT = _shm_pool.CACHE_LIMIT, 0
    conn.send(pattern(nbytes, seed))
    _shm_pool.CACHE_LIMIT = limit
    conn.send(pattern(nbytes, seed + 1))
    sent.set()
    import threading
    threading.Event().wait(60)


def is_recyclable_name(name: str) -> bool:
    return _shm.is_recyclable_name(name)


# -- Pausing a receiver right after it freed a recycled segment ----------------

def send_again_on_request(conn, nbytes: int, seed: int, sent) -> None:
    """Send an array, then another of the same size when asked (refilling the
    first one's segment if its receiver freed it), say so, then wait to be
    killed."""
    conn.send(pattern(nbytes, seed))
    conn.recv()
    conn.send(pattern(nbytes, seed + 1))
    sent.set()
    conn.recv()  # never comes: SIGKILL


def pause_after_freeing(action) -> list:
    """Run *action()* in this thread right after it next writes FREE into a
    recycled segment's header (a receiver's finalizer, or ``release``),
    before that code decides whether to unlink the segment.

    Returns a list that gets the exception *action* raised, if any (the
    finalizer that runs it would only print it).
    """
    import sys

    from polyproc._transport import shm_cache as _shm_pool

    put = _shm_pool._put.__code__
    errors: list = []

    def hook(frame, event, value):
        if (event != "return" or frame.f_code is not put
                or frame.f_locals["offset"] != _shm_pool._STATE
                or frame.f_locals["value"] != _shm_pool.FREE):
            return
        sys.setprofile(None)
        try:
            action()
        except BaseException as exc:  # report whatever it was
            errors.append(exc)

    sys.setprofile(hook)
    return errors
