"""Who removes a shared-memory segment when its sender dies, and at exit.

The protocol is in polyproc/_shm_tracker.py (module docstring) and
docs/zero_copy.md ("Who owns a segment").  Each test kills a real process
with SIGKILL at a known point: a pool worker is stopped where it holds a
result segment it has not sent (see ``_zero_copy_helpers.pause_result_at``,
a profile hook installed by the pool's initializer), a queue producer after
its put returned.  The tracker's work has no event a test could wait on, so
the tests poll /dev/shm with a bound: the contract is "within 1 s".
"""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import polyproc
from polyproc._transport import serialization as _serialization
from polyproc._transport import shm_cache as _shm_pool
from polyproc._transport import tracker as _shm_tracker

import _zero_copy_helpers as h
from _zero_copy_helpers import MiB, our_segments, pattern

# The documented bound for a dead sender's untaken segments.
WITHIN_S = 1.0


@pytest.fixture(autouse=True)
def no_leaks():
    _shm_pool.trim()
    before = our_segments()
    yield
    gc.collect()
    _shm_pool.trim()
    h.wait_for_segments(before, timeout=5)


# -- A pool worker killed with a result it has not sent -----------------------------------

def _kill_worker_holding_its_result(ctx, where: str, tmp_path,
                                    one_shot: bool = False) -> None:
    report, once = ctx.Queue(), str(tmp_path / "paused")
    with ctx.Pool(1, initializer=h.pause_result_at,
                  initargs=(where, report, once, one_shot)) as pool:
        lost = pool.apply_async(h.make_pattern, ((2 * MiB, 1),))
        pid, names = report.get(timeout=30)
        assert names and all(h.exists(n) for n in names), "no segment to lose"
        assert all(h.is_recyclable_name(n) != one_shot for n in names)
        os.kill(pid, signal.SIGKILL)
        h.wait_until(lambda: not any(h.exists(n) for n in names), WITHIN_S,
                     f"segments {names} of the killed worker removed")
        # A death while sending results is pinned on no task: the task runs
        # again alone on a replacement, without using a retry (docs/pool.md,
        # "Retries"), and its result arrives.
        assert np.array_equal(lost.get(timeout=30), pattern(2 * MiB, 1))
        # The pool goes on, through shared memory again.
        again = pool.apply(h.make_pattern, ((2 * MiB, 2),))
        assert np.array_equal(again, pattern(2 * MiB, 2))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["created", "dumped"])
def test_worker_killed_before_sending_its_result_leaves_no_segment(ctx, where,
                                                                  tmp_path):
    # "created": inside dumps, the segment is PENDING: the tracker removes
    # it when it sees the worker die.  "dumped": dumps returned, the payload
    # never reached the pipe: the scheduler reads the dead worker's pipe to
    # the end, then the tracker removes what was addressed to it.
    _kill_worker_holding_its_result(ctx, where, tmp_path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["created", "dumped"])
def test_one_shot_segments_of_a_killed_worker_are_removed_too(where, tmp_path):
    # One-shot segments (a sender whose recycling pool is full) have no
    # header: the tracker keeps their state from Register/HandOff messages.
    _kill_worker_holding_its_result(polyproc.get_context("fork"), where,
                                    tmp_path, one_shot=True)


# -- Segments in use survive their sender ------------------------------------------------

@pytest.mark.timeout(60)
def test_a_result_the_parent_holds_survives_its_worker(ctx):
    with ctx.Pool(1) as pool:
        pid, held = pool.apply(h.pid_and_pattern, ((4 * MiB, 3),))
        (name,) = h.segments_of(pid)
        os.kill(pid, signal.SIGKILL)
        h.wait_until(lambda: h.orphaned(name), WITHIN_S,
                     "the tracker saw the worker die")
        assert h.exists(name)                       # still in use: kept
        assert np.array_equal(held, pattern(4 * MiB, 3))
        held[:] = 7                                 # still a private, writable copy
        assert (held == 7).all()
        del held
        gc.collect()                                # the receiver unlinks it
        assert not h.exists(name)


@pytest.mark.timeout(60)
def test_an_argument_a_killed_worker_held_is_released_by_the_parent(ctx):
    q = ctx.Queue()
    with ctx.Pool(1) as pool:
        result = pool.apply_async(h.report_pid_then_block, (pattern(4 * MiB, 4), q))
        pid = q.get(timeout=30)
        (name,) = h.segments_of(os.getpid())        # the argument's, the parent's
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(polyproc.WorkerLostError):
            result.get(timeout=30)
        # No later send needed: the scheduler releases the lost chunk's
        # payload, and the parent unlinks what the dead receiver held.
        h.wait_until(lambda: not h.exists(name), WITHIN_S,
                     "the parent released its argument")


@pytest.mark.timeout(60)
def test_a_queue_item_of_a_killed_producer_waits_for_its_consumer(ctx):
    q, put = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=h.put_then_block, args=(q, 4 * MiB, 5, put))
    p.start()
    assert put.wait(30)
    (name,) = h.segments_of(p.pid)
    p.kill()
    p.join(30)
    # The item is in the queue: its segment is the queue's now, kept for
    # whoever gets it (the tracker only marks it orphaned).
    h.wait_until(lambda: h.orphaned(name), WITHIN_S, "the tracker saw the producer die")
    assert h.exists(name)
    got = q.get(timeout=30)
    assert np.array_equal(got, pattern(4 * MiB, 5))
    del got
    gc.collect()                                    # the consumer unlinks it
    assert not h.exists(name)


# -- A segment freed, refilled at once, and its sender killed --------------------------
# A sender refills a segment from the moment its receiver (or a carrier)
# writes FREE into it, so the one that freed it must not unlink it on the
# strength of "its sender is gone" read afterwards: by then a new payload may
# name it.  (Seen in the soak: a worker refilled the segment of a result the
# parent had just dropped, sent it and was killed; the parent's finalizer
# then found the worker dead and unlinked the segment of the unread result.)

def _sender_that_refills_on_request(ctx):
    r, w = ctx.Pipe()
    sent = ctx.Event()
    p = ctx.Process(target=h.send_again_on_request, args=(w, 4 * MiB, 8, sent))
    p.start()
    return r, p, sent


def _refill_then_kill(r, p, sent, name: str, wait_for_tracker: bool = False):
    """What the receiver does while stopped right after writing FREE."""
    def refill_then_kill() -> None:
        r.send("again")
        assert sent.wait(30), "the sender did not send again"
        assert h.segments_of(p.pid) == [name], "the sender did not refill the segment"
        p.kill()
        p.join(30)
        if wait_for_tracker:
            h.wait_until(lambda: h.orphaned(name), WITHIN_S,
                         "the tracker saw the sender die")
    return refill_then_kill


@pytest.mark.timeout(60)
def test_a_freed_segment_refilled_by_a_sender_killed_at_once_still_arrives(ctx):
    # The receiver's finalizer frees the segment, the sender refills it for
    # its next message and is killed, then the finalizer looks at the sender.
    r, p, sent = _sender_that_refills_on_request(ctx)
    try:
        first = r.recv()
        (name,) = h.segments_of(p.pid)
        errors = h.pause_after_freeing(_refill_then_kill(r, p, sent, name))
        del first                                   # the finalizer runs here
        gc.collect()
        assert not errors, errors
        second = r.recv()
        assert np.array_equal(second, pattern(4 * MiB, 9))
        del second
        gc.collect()                                # its last receiver unlinks it
        assert not h.exists(name)
    finally:
        sys.setprofile(None)
        p.kill()
        p.join(30)


@pytest.mark.timeout(60)
def test_a_released_segment_refilled_by_a_sender_killed_at_once_still_arrives(ctx):
    # The same with a carrier that gives a payload back unread (release),
    # and the tracker marking the segment orphaned before release looks.
    r, p, sent = _sender_that_refills_on_request(ctx)
    try:
        payload = r.recv_bytes()                    # never loaded
        (name,) = h.segments_of(p.pid)
        errors = h.pause_after_freeing(
            _refill_then_kill(r, p, sent, name, wait_for_tracker=True))
        _serialization.release(payload)
        assert not errors, errors
        second = r.recv()
        assert np.array_equal(second, pattern(4 * MiB, 9))
        del second
        gc.collect()
        assert not h.exists(name)
    finally:
        sys.setprofile(None)
        p.kill()
        p.join(30)


# -- A program that exits normally leaves nothing -----------------------------------------

PROGRAM = """
import os, sys
import numpy as np
import polyproc
from polyproc._transport import shm as _shm
sys.path.insert(0, {tests!r})
import _zero_copy_helpers as h

if __name__ == "__main__":
    ctx = polyproc.get_context({method!r})
    print("PREFIX", _shm.session_prefix(), flush=True)
    pool = ctx.Pool(2)                                   # left open: exit ends it
    held = pool.map(h.make_pattern, [(2 << 20, s) for s in range(4)], chunksize=1)
    q = ctx.Queue()
    q.put(h.pattern(2 << 20, 9))                         # nobody gets it
    r, w = ctx.Pipe()
    w.send(h.pattern(2 << 20, 10))                       # nobody reads it
    payload = polyproc._transport.serialization.dumps(h.pattern(2 << 20, 11))  # never sent
    print("LEFT", len(h.our_segments()), flush=True)
"""


@pytest.mark.timeout(60)
def test_a_program_leaves_no_segment_once_it_has_exited(ctx):
    code = PROGRAM.format(tests=os.path.dirname(__file__),
                          method=ctx.get_start_method())
    env = {k: v for k, v in os.environ.items() if k != _shm_tracker.SESSION_ENV}
    proc = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=50)
    # Right after exit, no waiting: the root ended its session synchronously.
    words = dict(line.split() for line in proc.stdout.splitlines())
    left_now = our_segments(words["PREFIX"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(words["LEFT"]) >= 7          # results, queue item, message, payload
    assert left_now == []


# -- The other side of the hand-off ------------------------------------------------------

@pytest.mark.timeout(60)
def test_payloads_in_a_pipe_survive_a_sender_killed_right_after(ctx_fs):
    # Once dumps returned, a carrier holds the segments, one-shot ones too
    # (whose state only the tracker knows): a sender killed before anyone
    # read them does not take them along.
    r, w = ctx_fs.Pipe(duplex=False)
    sent = ctx_fs.Event()
    p = ctx_fs.Process(target=h.send_one_shot_and_recycled_then_block,
                       args=(w, 4 * MiB, 6, sent))
    p.start()
    assert sent.wait(30)
    one_shot, recycled = sorted(h.segments_of(p.pid), key=h.is_recyclable_name)
    p.kill()
    p.join(30)
    # The tracker settles all of a dead sender's segments at once: when the
    # recycled one is marked orphaned, the one-shot one was dealt with too.
    h.wait_until(lambda: h.orphaned(recycled), WITHIN_S, "the tracker saw the sender die")
    assert h.exists(one_shot) and h.exists(recycled)
    assert np.array_equal(r.recv(), pattern(4 * MiB, 6))
    assert np.array_equal(r.recv(), pattern(4 * MiB, 7))
    gc.collect()
    assert not h.exists(one_shot) and not h.exists(recycled)
