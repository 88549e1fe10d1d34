"""polyproc._queue.ring: the ring protocol itself, in one process.

No child processes here: a lock holder that dies is a thread that ends
holding a robust mutex (the kernel marks it owner-dead exactly as for a
killed process), and waiters are threads.  tests/test_queues.py covers the
same machinery across real processes and SIGKILL.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

from polyproc._queue import ring as _queue_ring
from polyproc._queue import primitives as _queue_shm
from polyproc._queue import waiters as _queue_waiters
from polyproc._queue.ring import Ring, Timeout

pytestmark = pytest.mark.skipif(not _queue_shm.AVAILABLE,
                                reason="shared-memory queues need x86-64 Linux")

CAP = _queue_ring.INITIAL_CAPACITY
H = _queue_ring


def payload(i: int, size: int = 24) -> bytes:
    """A payload that says which one it is, *size* bytes long."""
    tag = f"<{i}>".encode()
    return (tag * (size // len(tag) + 1))[:size]


@pytest.fixture
def ring():
    return Ring.create(0)


def tail_position(ring: Ring) -> int:
    return ring._h[H._TAIL] & (ring._m[0] - 1)


def advance_to(ring: Ring, position: int) -> None:
    """Put and get filler records until the (empty) ring's TAIL is at *position*."""
    assert ring.qsize() == 0 and position % 8 == 0
    while tail_position(ring) != position:
        size = min((position - tail_position(ring)) % ring._m[0], 4096)
        filler = b"f" * (size - 8)                  # a record of *size* bytes
        ring.put_one(filler, True, None)
        assert ring.get_one(False, None) == filler


def die_holding(lock: int, work=None) -> None:
    """Lock *lock* in a thread that ends holding it (after *work*), as a killed process would."""
    def body(out):
        out.append(threading.get_native_id())
        assert _queue_shm.mutex_acquire(lock, None) == 0
        if work is not None:
            work()
    tid: list[int] = []
    thread = threading.Thread(target=body, args=(tid,))
    thread.start()
    thread.join(10)
    # join() returns before the OS thread is gone; the kernel marks the mutex
    # owner-dead only when it is.
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/self/task/{tid[0]}"):
        assert time.monotonic() < deadline, "the thread never ended"


# ------------------------------------------------------------ order

def test_single_and_batch_calls_interleave_in_order(ring):
    put = [0]

    def next_payloads(n):
        first = put[0]
        put[0] += n
        return [payload(i) for i in range(first, first + n)]

    got = []
    for _ in range(50):
        ring.put_one(next_payloads(1)[0], True, None)
        assert ring.put(next_payloads(3), True, None) == 3
        ring.put_one(next_payloads(1)[0], False, None)
        got.append(ring.get_one(True, None))
        got.extend(ring.get(2, True, None))
        assert ring.qsize() == put[0] - len(got)
    got.extend(ring.get(10**6, False, None))
    assert got == [payload(i) for i in range(put[0])]
    assert ring.qsize() == 0 and not ring.has_items()


def test_get_of_an_empty_ring_without_blocking_times_out_at_once(ring):
    start = time.monotonic()
    with pytest.raises(Timeout):
        ring.get_one(False, None)
    with pytest.raises(Timeout):
        ring.get(5, False, None)
    assert time.monotonic() - start < 0.5


# ------------------------------------------------------------ wrap-around

@pytest.mark.parametrize("position,size", [
    (CAP - 8, 100),     # the length in the last 8 bytes, the payload from 0
    (CAP - 40, 100),    # the payload itself runs past the end
    (CAP - 16, 8),      # a record that ends exactly at the end
])
@pytest.mark.parametrize("calls", ["single", "batch"])
def test_records_cross_the_end_of_the_ring(ring, position, size, calls):
    advance_to(ring, position)
    items = [payload(i, size) for i in range(3)]
    if calls == "single":
        for item in items:
            ring.put_one(item, True, None)
        got = [ring.get_one(True, None) for _ in items]
    else:
        assert ring.put(items, True, None) == 3
        got = ring.get(3, True, None)
    assert got == items
    assert ring._m[0] == CAP                        # wrapped, did not grow


# ------------------------------------------------------------ growth

@pytest.mark.parametrize("calls", ["single", "batch"])
def test_growth_keeps_a_wrapped_backlog_in_order(ring, calls):
    advance_to(ring, CAP - 1000)                    # the backlog wraps before it grows
    items = [payload(i, 1000) for i in range(3000)]  # ~3 MiB
    if calls == "single":
        for item in items:
            ring.put_one(item, True, None)
    else:
        assert ring.put(items, True, None) == len(items)
    assert ring._m[0] >= 4 * CAP
    assert ring.qsize() == len(items)
    got = [ring.get_one(True, None) for _ in range(1000)] + ring.get(10**6, True, None)
    assert got == items


def test_another_handle_sees_the_grown_ring(ring):
    # A handle whose process did not grow the ring remaps on its next call.
    other = _second_handle(ring)
    ring.put([payload(i, 1000) for i in range(2000)], True, None)
    assert ring._m[0] > CAP and other._m[0] == CAP
    assert other.get_one(True, None) == payload(0, 1000)
    assert other._m[0] == ring._m[0]
    other.put_one(payload(2000, 1000), True, None)
    assert ring.get(10**6, True, None) == [payload(i, 1000) for i in range(1, 2001)]


def _second_handle(ring: Ring) -> Ring:
    """Another handle on *ring*'s files, as another process would map them."""
    import mmap
    fd = _queue_shm.open_segment(ring.name)
    try:
        control = mmap.mmap(fd, 4096)
    finally:
        os.close(fd)
    return Ring(ring.name, control, _queue_shm.open_segment(ring.name + "_data"), owner=False)


# ------------------------------------------------------------ bounded

def test_a_bounded_ring_takes_what_fits_and_no_more():
    ring = Ring.create(3)
    assert ring.put([payload(i) for i in range(5)], False, None) == 3
    with pytest.raises(Timeout):
        ring.put_one(payload(9), False, None)
    start = time.monotonic()
    with pytest.raises(Timeout):
        ring.put([payload(9)], True, 0.05)
    assert time.monotonic() - start < 1.0
    assert ring.get_one(True, None) == payload(0)
    ring.put_one(payload(3), False, None)
    assert ring.get(10, True, None) == [payload(1), payload(2), payload(3)]


# ------------------------------------------------------------ repair

# A commit's stores, in the order _append and _take make them.
PUT_COMMIT = ("_P_TAIL", "_P_NPUT", "_TAIL", "_NPUT")
GET_COMMIT = ("_G_HEAD", "_G_NGOT", "_HEAD", "_NGOT")


def _write_record_and_die_mid_commit(ring: Ring, item: bytes, stores: int = 3):
    """The put side of a commit cut after its first *stores* stores (3: TAIL, not NPUT)."""
    def work():
        h = ring._h
        tail = h[H._TAIL]
        cap, _, dq = ring._m
        dq[(tail & (cap - 1)) >> 3] = len(item)
        ring._put_bytes(tail + 8, item)
        new_tail = tail + 8 + ((len(item) + 7) & ~7)
        values = (new_tail, h[H._NPUT] + 1, new_tail, h[H._NPUT] + 1)
        for slot, value in list(zip(PUT_COMMIT, values))[:stores]:
            h[getattr(H, slot)] = value
    die_holding(ring._put_lock, work)


@pytest.mark.parametrize("entry", ["put_one", "put"])
def test_commit_cut_short_by_a_dead_producer_is_finished_by_the_next_one(ring, entry):
    _write_record_and_die_mid_commit(ring, b"seven")
    assert ring.qsize() == 1                        # counted from the redo record
    if entry == "put_one":
        ring.put_one(b"eight", False, None)
    else:
        assert ring.put([b"eight"], False, None) == 1
    assert ring._h[H._NPUT] == 2 and ring.qsize() == 2
    assert ring.get(2, False, None) == [b"seven", b"eight"]


@pytest.mark.parametrize("stores", [1, 2])
def test_commit_cut_before_its_tail_store_leaves_nothing_in_the_queue(ring, stores):
    # The redo slots are written, TAIL is not: the record was never put, and
    # the next producer must neither count it nor move TAIL to it.
    ring.put_one(b"one", True, None)
    _write_record_and_die_mid_commit(ring, b"lost", stores)
    assert ring.qsize() == 1
    ring.put_one(b"two", False, None)
    assert ring._h[H._NPUT] == 2 and ring.qsize() == 2
    assert ring.get(5, False, None) == [b"one", b"two"]


@pytest.mark.parametrize("stores", [1, 2])
def test_a_stale_redo_record_is_not_taken_for_a_later_commit(ring, stores):
    # A commit cut before its TAIL store leaves P_TAIL ahead of TAIL.  The
    # next commit ends at that same TAIL, with two items instead of one: it
    # must count its own, and a later repair must use its own.
    _write_record_and_die_mid_commit(ring, b"lost", stores)     # one 16-byte record
    assert ring.put([b"", b""], False, None) == 2                 # two 8-byte records
    assert ring.qsize() == 2
    _write_record_and_die_mid_commit(ring, b"cut!")              # TAIL stored, not NPUT
    assert ring.qsize() == 3
    ring.put_one(b"next", False, None)                            # finds it, repairs
    assert ring._h[H._NPUT] == 4
    assert ring.get(9, False, None) == [b"", b"", b"cut!", b"next"]


@pytest.mark.parametrize("entry", ["get_one", "get"])
def test_commit_cut_short_by_a_dead_consumer_is_finished_by_the_next_one(ring, entry):
    ring.put([b"one", b"two"], True, None)

    def work():                                     # takes b"one", stores HEAD only
        h = ring._h
        head = h[H._HEAD]
        new_head = head + 8 + 8
        h[H._G_HEAD] = new_head
        h[H._G_NGOT] = h[H._NGOT] + 1
        h[H._HEAD] = new_head
    die_holding(ring._get_lock, work)
    assert ring.qsize() == 1
    got = ring.get_one(False, None) if entry == "get_one" else ring.get(5, False, None)[0]
    assert got == b"two"
    assert ring._h[H._NGOT] == 2 and ring.qsize() == 0


@pytest.mark.parametrize("stores", [1, 2])
def test_get_commit_cut_before_its_head_store_leaves_the_item_in_the_queue(ring, stores):
    ring.put([b"one", b"two"], True, None)

    def work():                                     # would take b"one"
        h = ring._h
        new_head = h[H._HEAD] + 8 + 8
        values = (new_head, h[H._NGOT] + 1)
        for slot, value in list(zip(GET_COMMIT, values))[:stores]:
            h[getattr(H, slot)] = value
    die_holding(ring._get_lock, work)
    assert ring.qsize() == 2
    assert ring.get_one(False, None) == b"one"
    assert ring._h[H._NGOT] == 1 and ring.qsize() == 1


def test_a_dead_holder_without_a_commit_leaves_nothing_to_repair(ring):
    ring.put_one(b"kept", True, None)
    die_holding(ring._put_lock)
    die_holding(ring._get_lock)
    ring.put_one(b"next", False, None)
    assert ring.get_one(False, None) == b"kept"
    assert ring.get_one(False, None) == b"next"
    assert ring.qsize() == 0


# ------------------------------------------------------------ waiting

def test_every_commit_changes_the_word_its_waiters_sleep_on(ring):
    f = ring._f
    for put in (lambda: ring.put_one(b"x", True, None),
                lambda: ring.put([b"y", b"z"], True, None)):
        before = f[H._NOT_EMPTY]
        put()
        assert f[H._NOT_EMPTY] != before
    for get in (lambda: ring.get_one(True, None), lambda: ring.get(2, True, None)):
        before = f[H._NOT_FULL]
        get()
        assert f[H._NOT_FULL] != before


@pytest.fixture
def no_slices(monkeypatch):
    """Waits that last 30 s a slice: a missed wake-up shows as a hang, not a 0.1 s delay."""
    monkeypatch.setattr(_queue_waiters, "WAIT_SLICE", 30.0)


def _wait_for_waiter(ring: Ring, kind: int) -> None:
    deadline = time.monotonic() + 10
    while ring._h[kind] < 1:
        assert time.monotonic() < deadline, "the waiter never registered"


@pytest.mark.timeout(30)
def test_a_consumer_asleep_is_woken_by_a_put(ring, no_slices):
    got = []
    consumer = threading.Thread(target=lambda: got.append(ring.get_one(True, 20)))
    consumer.start()
    _wait_for_waiter(ring, H._GET_WAITERS)
    ring.put_one(b"wake up", True, None)
    consumer.join(5)
    assert not consumer.is_alive() and got == [b"wake up"]
    assert ring._h[H._GET_WAITERS] == 0


@pytest.mark.timeout(30)
def test_a_producer_asleep_on_a_full_ring_is_woken_by_a_get(no_slices):
    ring = Ring.create(1)
    ring.put_one(b"first", True, None)
    producer = threading.Thread(target=lambda: ring.put_one(b"second", True, 20))
    producer.start()
    _wait_for_waiter(ring, H._PUT_WAITERS)
    assert ring.get_one(True, None) == b"first"
    producer.join(5)
    assert not producer.is_alive()
    assert ring.get_one(False, None) == b"second"
    assert ring._h[H._PUT_WAITERS] == 0


def test_the_registry_forgets_dead_waiters(ring):
    waiters = ring._waiters
    dead = _a_pid_nobody_has()
    slot = _queue_waiters.SLOTS_BASE + 5
    ring._h[slot] = dead
    token = waiters.add(H._GET_WAITERS, ring._f[H._NOT_EMPTY])
    assert ring._h[H._GET_WAITERS] == 1             # ourselves, not the dead pid
    assert ring._h[slot] == 0
    waiters.drop(H._GET_WAITERS, token)
    assert ring._h[H._GET_WAITERS] == 0


def test_a_waker_retires_only_the_waiters_whose_word_has_changed(ring):
    waiters = ring._waiters
    stale = waiters.add(H._GET_WAITERS, ring._f[H._NOT_EMPTY])
    ring.put_one(b"x", True, None)
    # Its word moved on with that put: the put's waker retired it (it either
    # slept and is woken, or will find the word changed and not sleep).
    assert ring._h[H._GET_WAITERS] == 0 and ring._h[stale[0]] == 0
    fresh = waiters.add(H._GET_WAITERS, ring._f[H._NOT_EMPTY])
    ring._wake_getters()
    # This one read the current word, so it may be about to sleep on it:
    # kept, for the next put to wake.
    assert ring._h[H._GET_WAITERS] == 1 and ring._h[fresh[0]] == fresh[1]
    waiters.drop(H._GET_WAITERS, stale)             # a retired token touches nothing
    assert ring._h[fresh[0]] == fresh[1]
    ring.put_one(b"y", True, None)
    assert ring._h[H._GET_WAITERS] == 0
    waiters.drop(H._GET_WAITERS, fresh)
    assert ring._h[H._GET_WAITERS] == 0


def _a_pid_nobody_has() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read()) - 1
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_spinning_sees_a_change_and_gives_up_without_one(ring):
    h = ring._h
    assert not _queue_waiters.spin_until_differ(h, H._TAIL, H._HEAD)
    ring.put_one(b"x", True, None)
    assert _queue_waiters.spin_until_differ(h, H._TAIL, H._HEAD)


# ------------------------------------------------------------ elsewhere

def test_without_the_shared_memory_queues_the_stdlib_queues_are_used():
    # Elsewhere than x86-64 Linux _queue_shm has no C calls to offer, and
    # importing polyproc.queues (hence _queue_ring) must still work.
    import subprocess
    import sys
    code = ("import polyproc._platform as p; p.ORDERED_SHARED_MEMORY = False\n"
            "import multiprocessing.queues, polyproc.queues as q\n"
            "assert q.Queue is multiprocessing.queues.Queue, q.Queue\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
