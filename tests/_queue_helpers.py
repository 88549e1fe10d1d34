"""Process targets for tests/test_queues.py (importable, so spawn can run them)."""
from __future__ import annotations

import hashlib
import os
import signal
import time

from polyproc._queue import ring as _queue_ring
from polyproc._queue import primitives as _queue_shm


def item(tag: int, seq: int, size: int = 0) -> tuple:
    """An item whose body can be checked: a torn message would not verify."""
    digest = hashlib.sha1(f"{tag}-{seq}".encode()).digest()
    body = (digest * (size // len(digest) + 1))[:size] if size else digest
    return (tag, seq, body)


def check(value: tuple) -> tuple[int, int]:
    tag, seq, body = value
    digest = hashlib.sha1(f"{tag}-{seq}".encode()).digest()
    expected = (digest * (len(body) // len(digest) + 1))[:len(body)]
    assert body == expected, f"torn or corrupted item {tag}/{seq}"
    return tag, seq


def put_items(q, tag: int, n: int, size: int = 0) -> None:
    for seq in range(n):
        q.put(item(tag, seq, size))


def put_items_then_exit(q, n: int, hard: bool) -> None:
    """Put a backlog and exit at once: normally, or with os._exit."""
    for seq in range(n):
        q.put(item(0, seq, 100))
    q.put(b"x" * (3 * 2**20))      # one large item too (shared-memory path)
    if hard:
        os._exit(0)


def get_n(q, n: int, out) -> None:
    out.put([q.get(timeout=20) for _ in range(n)])


def collect_until_none(q, out) -> None:
    got = []
    while True:
        value = q.get(timeout=20)
        if value is None:
            break
        got.append(value)
    out.put(got)


def put_square(args) -> int:
    """Pool task: put into the queue received as an argument."""
    q, i = args
    q.put(i * i)
    return i


def work_and_task_done(q, n: int) -> None:
    for _ in range(n):
        q.get(timeout=20)
        q.task_done()


def put_forever(q, tag: int, size: int) -> None:
    seq = 0
    while True:
        q.put(item(tag, seq, size))
        seq += 1


def get_forever(q, started) -> None:
    started.set()
    while True:
        q.get(timeout=20)


def die_holding_lock(q, side: str) -> None:
    """SIGKILL ourselves while holding the queue's put or get lock."""
    ring = q._ring
    addr = ring._put_lock if side == "put" else ring._get_lock
    assert _queue_shm.mutex_acquire(addr, None) is not None
    os.kill(os.getpid(), signal.SIGKILL)


def die_mid_commit(q) -> None:
    """SIGKILL ourselves halfway through committing one put.

    The record is written and the redo slots say where TAIL and NPUT go,
    but only TAIL was stored: exactly the state a kill between the two
    stores of a commit leaves.
    """
    ring = q._ring
    h = ring._h
    payload = b"\x80\x05K\x07."          # pickle of 7
    assert _queue_shm.mutex_acquire(ring._put_lock, None) is not None
    tail = h[_queue_ring._TAIL]
    cap, _, dq = ring._m
    pos = tail & (cap - 1)
    dq[pos >> 3] = len(payload)
    ring._put_bytes(tail + 8, payload)
    new_tail = tail + 8 + ((len(payload) + 7) & ~7)
    h[_queue_ring._P_TAIL] = new_tail
    h[_queue_ring._P_NPUT] = h[_queue_ring._NPUT] + 1
    h[_queue_ring._TAIL] = new_tail
    os.kill(os.getpid(), signal.SIGKILL)


def make_queue_and_exit(ctx_name: str, out) -> None:
    import polyproc
    q = polyproc.get_context(ctx_name).Queue()
    q.put("left behind")
    out.send(q._ring.name)


def attach_and_report(q, out) -> None:
    """Report the queue's size as seen from another process."""
    out.put(q.qsize())


def block_on_pipe(conn, started) -> None:
    """Hold a pipe end and block reading it until killed."""
    started.set()
    conn.recv()


def get_until_interrupted(q, ready, out) -> None:
    """Block in get() until SIGINT; report what happened and that q still works."""
    # The test run may have been started with SIGINT ignored (a shell's
    # background job), which children inherit: Ctrl-C must raise here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ready.set()
    start = None
    try:
        q.get(timeout=30)
        out.put(("got an item", 0.0, -1))
    except KeyboardInterrupt:
        start = time.monotonic()
        q.put("after Ctrl-C")
        value = q.get(timeout=5)
        waiters = q._ring._h[_queue_ring._GET_WAITERS]
        out.put((value, time.monotonic() - start, waiters))


def write_items(q, n: int, path: str) -> None:
    with open(path, "w") as f:
        f.write(repr([q.get(timeout=20) for _ in range(n)]))


def main_that_exits_right_after_start(method: str, path: str) -> None:
    """A main program that starts a non-daemonic child and ends at once."""
    import polyproc
    ctx = polyproc.get_context(method)
    q = ctx.Queue()
    ctx.Process(target=write_items, args=(q, 3, path)).start()
    q.put_many(["a", "b", "c"])


def die_mid_grow(q) -> None:
    """SIGKILL ourselves halfway through growing the ring.

    Both locks held, the data file already enlarged and the live records
    copied into the new upper part, the new capacity not yet committed.
    """
    ring = q._ring
    h = ring._h
    assert _queue_shm.mutex_acquire(ring._put_lock, None) is not None
    assert _queue_shm.mutex_acquire(ring._get_lock, None) is not None
    head, tail = h[_queue_ring._HEAD], h[_queue_ring._TAIL]
    live = ring._read(head, tail - head)
    new_cap = ring._m[0] * 4
    _queue_shm.reserve(ring._fd, new_cap)
    ring._map_data(new_cap)
    ring._put_bytes(head, live)
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_in_get(q, ready) -> None:
    ready.set()
    q.get(timeout=60)


class Bytes(bytes):
    """A bytes subclass: must come back as itself, not as plain bytes."""


class Str(str):
    """A str subclass: must come back as itself, not as plain str."""


def raw_payload_items() -> list:
    """Items around the bytes/str fast path: look-alikes of its tags and of
    pickles, empty ones, non-ASCII and a lone surrogate, subclasses, and a
    bytes too big for the fast path (it takes the zero-copy path)."""
    return [b"", b"\x00", b"\x01tag", b"\x80\x05K\x07.", b"\xffPPZ",
            "", "\x00", "\x01", "h\u00e9llo \U0001f600", "lone \ud800 surrogate",
            Bytes(b"sub"), Str("sub"), 7, (b"in", "a tuple"), bytearray(b"ba"),
            b"x" * (1 << 20)]


def put_raw_payload_items(q) -> None:
    for obj in raw_payload_items():
        q.put(obj)
