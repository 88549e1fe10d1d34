"""``insights=True`` and ``insights()`` (polyproc/_observe/insights.py): real pools,
workers killed by real signals, tasks retried and timed out."""
from __future__ import annotations

import json
import os
import time

import pytest

import polyproc
from polyproc import TaskTimeoutError, WorkerLostError
from polyproc.pool import ThreadPool

import _pool_helpers as h

FORK = polyproc.get_context("fork")
TOTALS = ("tasks_completed", "tasks_failed", "retries", "timeouts", "workers_lost",
          "wall_time", "serialization_time", "bytes_in_band", "bytes_shared_memory")
WORKER_KEYS = ("pid", "host", "tasks_completed", "working_time", "waiting_time",
               "start_up_time", "status", "exitcode", "signal")


def _round_trip(insights: dict) -> dict:
    """The insights through JSON: they must be plain data."""
    return json.loads(json.dumps(insights))


def _wait_workers_started(observed, count: int, limit: float = 20.0) -> None:
    """Return once *observed* (a pool or an executor made with insights=True)
    has counted *count* workers ready."""
    deadline = time.monotonic() + limit
    while observed.insights()["totals"]["workers_started"] < count:
        assert time.monotonic() < deadline, f"{count} workers not ready within {limit} s"
        time.sleep(0.005)


def test_counts_tasks_workers_and_times(ctx):
    with ctx.Pool(2, insights=True) as pool:
        assert pool.map(h.square, range(40), chunksize=4) == [x * x for x in range(40)]
        with pytest.raises(ValueError):
            pool.apply(h.raise_value_error, (1,))
        pids = {p.pid for p in pool._pool}
        insights = _round_trip(pool.insights())
    totals = insights["totals"]
    assert set(TOTALS) <= set(totals)
    assert totals["tasks_completed"] == 40
    assert totals["tasks_failed"] == 1
    assert totals["retries"] == totals["timeouts"] == totals["workers_lost"] == 0
    assert totals["chunks_completed"] == 11
    assert totals["bytes_in_band"] > 0 and totals["bytes_shared_memory"] == 0
    assert 0 < totals["serialization_time"] < totals["wall_time"]
    workers = insights["workers"]
    # Listed from when they are ready: under spawn and forkserver one
    # worker may have run every task before the other is.
    assert workers and {w["pid"] for w in workers} <= pids
    for worker in workers:
        assert set(WORKER_KEYS) <= set(worker)
        assert worker["status"] == "running"
        assert worker["start_up_time"] > 0
        assert worker["waiting_time"] >= 0
        # A worker ready late may have had no task at all.
        assert (worker["working_time"] > 0) == (worker["chunks"] > 0)
    assert sum(w["tasks_completed"] for w in workers) == 40


def test_closed_pool_reports_workers_shut_down_and_stops_the_clock():
    pool = FORK.Pool(2, insights=True)
    pool.map(h.square, range(8))
    pool.close()
    pool.join()
    first = pool.insights()
    assert {w["status"] for w in first["workers"]} == {"shut down"}
    assert pool.insights()["totals"]["wall_time"] == first["totals"]["wall_time"]


def test_killed_worker_is_lost_with_its_signal_and_the_retry_counted(ctx, tmp_path):
    with ctx.Pool(2, insights=True) as pool:
        marker = str(tmp_path / "died")
        assert pool.apply(h.die_first_time, (marker,), retries=1) == "ok"
        with pytest.raises(WorkerLostError):
            pool.apply(h.kill_self, (0,))
        insights = _round_trip(pool.insights())
    totals = insights["totals"]
    assert totals["retries"] == 1
    assert totals["workers_lost"] == 2
    assert totals["tasks_completed"] == 1 and totals["tasks_failed"] == 1
    lost = [w for w in insights["workers"] if w["status"] == "lost"]
    assert len(lost) == 2
    for worker in lost:
        assert worker["signal"] == "SIGKILL" and worker["exitcode"] == -9
    # Lost workers stay listed after their replacements took their slots.
    assert {w["slot"] for w in lost} <= {0, 1}


def test_worker_that_exits_reports_its_exit_code():
    with FORK.Pool(1, insights=True) as pool:
        with pytest.raises(WorkerLostError):
            pool.apply(h.exit_on, (3, 3))
        insights = pool.insights()
    (lost,) = [w for w in insights["workers"] if w["status"] == "lost"]
    assert lost["exitcode"] == 7 and lost["signal"] is None


def test_tasks_submitted_to_a_broken_pool_count_as_failed(ctx):
    # Whether a map reaches the pool before or after its initializer broke
    # it (a race the start method decides), its tasks failed: insights
    # count them either way.
    with ctx.Pool(1, initializer=h.failing_initializer, insights=True) as pool:
        with pytest.raises(polyproc.InitializerError):
            pool.map(h.square, range(4))
        with pytest.raises(polyproc.InitializerError):  # the pool is broken by now
            pool.map(h.square, range(5))
        with pytest.raises(polyproc.InitializerError):
            pool.apply_async(h.square, (1,)).get(10)
        totals = pool.insights()["totals"]
    assert totals["tasks_failed"] == 10 and totals["tasks_completed"] == 0


def test_timeout_is_counted():
    with FORK.Pool(1, insights=True) as pool:
        with pytest.raises(TaskTimeoutError):
            pool.apply(h.sleep_for, (30,), timeout=0.2)
        insights = pool.insights()
    assert insights["totals"]["timeouts"] == 1
    assert insights["totals"]["tasks_failed"] == 1
    assert insights["totals"]["workers_lost"] == 0
    assert [w["status"] for w in insights["workers"]].count("timed out") == 1


def test_slowest_tasks_name_their_arguments():
    with FORK.Pool(2, insights=True) as pool:
        results = [pool.apply_async(h.sleep_for, (s,)) for s in (0.001, 0.15, 0.002, 0.05)]
        [r.get(10) for r in results]
        slowest = pool.insights()["slowest_tasks"]
    assert [entry["task"] for entry in slowest[:2]] == [
        "sleep_for(0.15) [task 0]", "sleep_for(0.05) [task 0]"]
    assert slowest[0]["duration"] >= 0.15 and slowest[0]["tasks"] == 1
    durations = [entry["duration"] for entry in slowest]
    assert durations == sorted(durations, reverse=True)


def test_slowest_list_is_bounded():
    from polyproc._observe.insights import SLOWEST
    with FORK.Pool(2, insights=True) as pool:
        pool.map(h.square, range(200), chunksize=1)
        slowest = pool.insights()["slowest_tasks"]
    assert len(slowest) == SLOWEST


def test_bytes_through_shared_memory_are_counted():
    size = 2 << 20  # above the zero-copy threshold (1 MiB), both ways
    with FORK.Pool(1, insights=True) as pool:
        assert pool.apply(len, (b"x" * size,)) == size
        assert len(pool.apply(bytes, (size,))) == size
        totals = pool.insights()["totals"]
    assert totals["bytes_shared_memory"] >= 2 * size
    assert totals["bytes_in_band"] < size  # only the segments' names went through pipes


def test_thread_pool_reports_its_own_process():
    with ThreadPool(3, insights=True) as pool:
        pool.map(h.square, range(30), chunksize=3)
        insights = _round_trip(pool.insights())
    assert insights["totals"]["tasks_completed"] == 30
    (worker,) = insights["workers"]
    assert worker["pid"] == os.getpid() and worker["tasks_completed"] == 30


@pytest.mark.parametrize("ending", ["terminate", "close and join"])
def test_thread_pool_that_is_done_stops_its_clock(ending):
    # A ThreadPool fires no worker events: without being told, its entry
    # stayed "running" and its wall and waiting times grew for ever.
    pool = ThreadPool(2, insights=True)
    pool.map(h.square, range(10))
    if ending == "terminate":
        pool.terminate()
    else:
        pool.close()
        pool.join()
    first = pool.insights()
    h.sleep_for(0.05)  # time passes: nothing may move
    again = pool.insights()
    assert again["totals"]["wall_time"] == first["totals"]["wall_time"]
    (worker,) = again["workers"]
    assert worker == first["workers"][0]
    assert worker["status"] == ("terminated" if ending == "terminate" else "shut down")


def test_executor_insights():
    with polyproc.Executor(2, mp_context=FORK, insights=True) as executor:
        futures = [executor.submit(h.square, x) for x in range(20)]
        assert [f.result(10) for f in futures] == [x * x for x in range(20)]
        assert list(executor.map(h.square, range(10), chunksize=5)) == \
            [x * x for x in range(10)]
        # A worker is listed once it is ready; the other one may have run
        # all 30 quick tasks before that (a loaded machine).
        _wait_workers_started(executor, 2)
        insights = _round_trip(executor.insights())
    assert insights["totals"]["tasks_completed"] == 30
    assert insights["totals"]["chunks_completed"] == 22
    assert len(insights["workers"]) == 2


def test_insights_are_off_by_default():
    with FORK.Pool(1) as pool, pytest.raises(ValueError, match="insights=True"):
        pool.insights()
    with polyproc.Executor(1, mp_context=FORK) as executor, \
            pytest.raises(ValueError, match="insights=True"):
        executor.insights()


def test_a_pool_without_insights_or_timeline_attaches_no_instrument():
    # What makes them free when off: no instrument, so the scheduler fires
    # and builds no event at all (one truth test of an empty dict).
    # One pool at a time: a fork pool made while another's threads run
    # would fork a multi-threaded process (Python 3.12+ warns).
    for make_pool in (lambda: FORK.Pool(1), lambda: ThreadPool(1),
                      lambda: FORK.Pool(1, insights=False, timeline=None)):
        pool = make_pool()
        try:
            assert pool.map(h.square, range(3)) == [0, 1, 4]
            assert not pool._registry.instruments
        finally:
            pool.terminate()
            pool.join()
    with polyproc.Executor(1, mp_context=FORK) as executor:
        assert executor.submit(h.square, 3).result(timeout=10) == 9
        assert not executor._instruments
