"""What a cluster pool shows of its work: ``stacks()``, ``hang_report=``, insights, timeline.

On the session's real cluster (conftest.py ``dask_cluster``: two Dask
worker processes of one thread each, with nannies).  The blocked tasks
are released by a file, so that none outlives its test on the shared
cluster (Dask cannot stop a running task).
"""
from __future__ import annotations

import pathlib
import socket
import time

import polyproc

import _cluster_helpers as h

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
