"""What a cluster pool shows of its work: ``stacks()``, ``hang_report=``, insights, timeline.

On the session's real cluster (conftest.py ``dask_cluster``: two Dask
worker processes of one thread each, with nannies).  The blocked tasks
are released by a file, so that none outlives its test on the shared
cluster (Dask cannot stop a running task).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import time

import pytest

import polyproc
from polyproc import WorkerLostError

import _cluster_helpers as h
from _cluster import wait_for_workers

WAIT = 30


def _wait_for_file(path: pathlib.Path, seconds: float = WAIT) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        time.sleep(0.02)  # polling a file another process writes
    raise TimeoutError(f"{path} did not appear")


def _block_both_workers(pool, tmp_path):
    """A task blocked in time.sleep on one worker, one in Lock.acquire on the other."""
    release = tmp_path / "release"
    asleep = pool.apply_async(h.sleep_until, (str(tmp_path / "sleep"), str(release)))
    locked = pool.apply_async(h.wait_on_lock_until, (str(tmp_path / "lock"), str(release)))
    pids = (int(_wait_for_file(tmp_path / "sleep")), int(_wait_for_file(tmp_path / "lock")))
    return release, (asleep, locked), pids


def test_stacks_show_tasks_blocked_in_sleep_and_in_a_lock(dask_cluster, tmp_path):
    with polyproc.Pool(cluster=dask_cluster) as pool:
        release, results, (sleeper, waiter) = _block_both_workers(pool, tmp_path)
        try:
            started = time.monotonic()
            texts = pool.stacks(timeout=5)
            assert time.monotonic() - started < 5
        finally:
            release.touch()
        assert [r.get(WAIT) for r in results] == [sleeper, waiter]
    assert {sleeper, waiter} <= set(texts)
    host = socket.gethostname()
    for pid, blocked_in, line in ((sleeper, "sleep_until", "time.sleep(0.05)"),
                                  (waiter, "wait_on_lock_until",
                                   "lock.acquire(timeout=0.05)")):
        text = texts[pid]
        assert text.startswith("Dask worker tcp://127.0.0.1:"), text
        assert f"on host {host} (pid {pid})" in text.splitlines()[0]
        assert f"running {blocked_in}(" in text and "[task 0]" in text, text
        assert f"in {blocked_in}" in text and line in text, text


def test_stacks_of_an_idle_cluster_pool_say_it_holds_nothing(dask_cluster):
    with polyproc.Pool(cluster=dask_cluster) as pool:
        pids = set(pool.map(h.pid, range(8), chunksize=1))
        texts = pool.stacks()
    assert pids <= set(texts)
    assert pool.stacks() == {}   # done: nobody to ask
    assert all("holds no task of this pool" in text for text in texts.values()), texts


def test_hang_report_on_a_cluster_pool_once_per_stall(dask_cluster, tmp_path, capsys):
    with polyproc.Pool(cluster=dask_cluster, hang_report=0.5) as pool:
        release, results, (sleeper, waiter) = _block_both_workers(pool, tmp_path)
        try:
            report = ""
            deadline = time.monotonic() + WAIT
            while "in wait_on_lock_until" not in report and time.monotonic() < deadline:
                time.sleep(0.05)  # polling what the ClusterScheduler writes to stderr
                report += capsys.readouterr().err
        finally:
            release.touch()
        assert [r.get(WAIT) for r in results] == [sleeper, waiter]
    report += capsys.readouterr().err
    assert report.count("polyproc: no task of the pool has finished for ") == 1, report
    assert "(2 outstanding, 0 of them queued)" in report
    assert f"--- worker {sleeper} ---" in report and f"--- worker {waiter} ---" in report
    assert "in sleep_until" in report and "in wait_on_lock_until" in report


def test_insights_of_a_cluster_pool_count_each_dask_worker(dask_cluster):
    wait_for_workers(dask_cluster, 2, WAIT)
    with polyproc.Pool(cluster=dask_cluster, insights=True) as pool:
        naps = [(i, 0.01 if i < 2 else 0.0) for i in range(40)]
        assert pool.map(h.nap, naps, chunksize=1) == list(range(40))
        pids = pool.map(h.pid, range(40), chunksize=1)
        report = pool.insights()
    assert report["totals"]["tasks_completed"] == 80
    assert report["totals"]["workers_started"] == len(report["workers"])
    by_pid = {w["pid"]: w for w in report["workers"]}
    assert set(by_pid) == set(pids), report["workers"]   # one entry per process that ran
    assert sum(w["tasks_completed"] for w in by_pid.values()) == 80
    for pid, worker in by_pid.items():
        assert worker["host"] == socket.gethostname()
        assert worker["tasks_completed"] >= pids.count(pid)
        assert 0 < worker["working_time"] < report["totals"]["wall_time"]
    assert report["totals"]["working_time"] >= 0.02   # the two naps, measured remotely


def test_a_cluster_pool_s_timeline_has_a_track_per_dask_worker(dask_cluster, tmp_path):
    with polyproc.Pool(cluster=dask_cluster, timeline=True) as pool:
        pids = pool.map(h.pid, range(20), chunksize=1)
        pool.timeline(tmp_path / "run.json")
    trace = json.loads((tmp_path / "run.json").read_text())["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in trace
             if e["ph"] == "M" and e["name"] == "process_name"}
    host = socket.gethostname()
    for pid in set(pids):
        assert re.fullmatch(rf"worker \d \(pid {pid} on {re.escape(host)}\)", names[pid])
    chunks = [e for e in trace if e["ph"] == "X" and e["cat"] == "chunk"]
    assert len(chunks) == 20 and {e["pid"] for e in chunks} == set(pids)
    assert all(e["ts"] >= 0 for e in chunks)   # the workers' clock put on the pool's


def test_a_killed_dask_worker_shows_as_lost_and_its_retry_is_counted(dask_cluster,
                                                                     tmp_path):
    wait_for_workers(dask_cluster, 2, WAIT)
    runs = tmp_path / "runs"
    with polyproc.Pool(cluster=dask_cluster, insights=True, timeline=True) as pool:
        with pytest.raises(WorkerLostError):
            pool.apply(h.record_and_die, (str(runs),), retries=1)
        report = pool.insights()
        pool.timeline(tmp_path / "run.json")
    killed = [int(pid) for pid in runs.read_text().split()]
    assert len(killed) == 2
    totals = report["totals"]
    assert (totals["workers_lost"], totals["retries"], totals["tasks_failed"]) == (2, 1, 1)
    lost = {w["pid"]: w["status"] for w in report["workers"] if w["status"] == "lost"}
    assert set(lost) == set(killed)
    trace = json.loads((tmp_path / "run.json").read_text())["traceEvents"]
    assert {e["pid"] for e in trace if e.get("cat") == "worker"} == set(killed)
    assert [e["pid"] for e in trace if e.get("cat") == "retry"] == killed[:1]


def test_a_worker_that_cannot_answer_gets_a_no_stack_text(dask_cluster, tmp_path):
    # A task holding the GIL in C keeps its worker's event loop from
    # answering; the others answer, and the call keeps its bound.  The task
    # holds it until released (a wait, not a computation sized by a
    # measurement here: the worker may run slower or faster than that).
    release = tmp_path / "release"
    os.mkfifo(release)
    wait_for_workers(dask_cluster, 2, WAIT)
    with polyproc.Pool(cluster=dask_cluster) as pool:
        known = set(pool.stacks(timeout=WAIT))   # the pool learns the workers' pids
        hog = pool.apply_async(h.hold_the_gil, (str(tmp_path / "hog"), str(release)))
        pid = int(_wait_for_file(tmp_path / "hog"))
        asked = time.monotonic()
        texts = pool.stacks(timeout=0.5)
        elapsed = time.monotonic() - asked
        with open(release, "wb") as writer:   # the task holds the FIFO open
            writer.write(b"x")
        assert hog.get(WAIT) == 1
    assert pid in known
    assert texts[pid].splitlines()[1] == (
        "no stack: the worker did not answer within 0.5 s (a task holding the GIL in "
        "C, or the worker is overloaded or gone)"), texts[pid]
    assert elapsed < 2.5
    assert all("holds no task of this pool" in text
               for other, text in texts.items() if other != pid), texts


def test_a_timed_out_task_on_a_cluster_counts_and_shows_on_its_worker(dask_cluster,
                                                                        tmp_path):
    with polyproc.Pool(cluster=dask_cluster, insights=True, timeline=True) as pool:
        with pytest.raises(polyproc.TaskTimeoutError):
            pool.apply(time.sleep, (60,), timeout=0.5)
        report = pool.insights()
        pool.timeline(tmp_path / "run.json")
    assert (report["totals"]["timeouts"], report["totals"]["tasks_failed"]) == (1, 1)
    assert report["totals"]["workers_lost"] == 0   # its child was killed, not the worker
    (worker,) = report["workers"]
    assert worker["status"] == "running" and worker["tasks_failed"] == 1
    trace = json.loads((tmp_path / "run.json").read_text())["traceEvents"]
    assert [e["pid"] for e in trace if e.get("cat") == "timeout"] == [worker["pid"]]
