"""Faults on a real Dask cluster: lost workers, timeouts, retiring workers, bad input.

Worker processes are killed with real signals (SIGKILL); their nannies
start new ones, and each test that needs both workers waits for them first
(``_both_workers``), bounded.
"""
from __future__ import annotations

import pathlib
import socket
import sys
import time

import pytest

import polyproc
from polyproc import ClusterError, TaskTimeoutError, WorkerLostError

import _cluster_helpers as h
from _cluster import wait_for_workers

WAIT = 30


def _both_workers(address: str) -> None:
    wait_for_workers(address, 2, WAIT)


def _wait_for_file(path: pathlib.Path, seconds: float = WAIT) -> str:
    """The text of *path* once a task wrote it (bounded)."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)  # polling a file that a task on the cluster writes
    return path.read_text()


def _runs(path: pathlib.Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


def test_a_worker_killed_mid_task_fails_that_task_only(dask_cluster, tmp_path):
    _both_workers(dask_cluster)
    with polyproc.Pool(cluster=dask_cluster) as pool:
        marker = tmp_path / "pid"
        doomed = pool.apply_async(h.announce_and_sleep, (str(marker), 60))
        pid = int(_wait_for_file(marker))
        others = pool.map_async(h.square, range(20))
        import os
        import signal
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerLostError, match=r"Dask worker tcp://127\.0\.0\.1:\d+ "
                                                  rf"\(pid {pid}\)") as info:
            doomed.get(WAIT)
        assert info.value.pid == pid
        assert others.get(WAIT) == [x * x for x in range(20)]
        assert pool.apply(h.square, (3,)) == 9


@pytest.mark.parametrize("retries", [0, 1])
def test_retries_rerun_a_task_that_loses_its_worker_exactly_that_often(
        dask_cluster, tmp_path, retries):
    _both_workers(dask_cluster)
    runs = tmp_path / "runs"
    with polyproc.Pool(cluster=dask_cluster) as pool:
        with pytest.raises(WorkerLostError, match="was lost"):
            pool.apply(h.record_and_die, (str(runs),), retries=retries)
        assert _runs(runs) == retries + 1
        assert pool.apply(h.square, (4,)) == 16


def test_a_task_that_kills_its_worker_in_a_chunk_fails_alone(dask_cluster, tmp_path):
    _both_workers(dask_cluster)
    runs = tmp_path / "runs"
    with polyproc.Pool(cluster=dask_cluster) as pool:
        result = pool.starmap_async(h.die_on, [(x, 4, str(runs)) for x in range(6)],
                                    chunksize=3)
        with pytest.raises(WorkerLostError, match=r"die_on\(4, 4"):
            result.get(WAIT)
        # Once in its chunk of three, once alone (then it is the known culprit).
        assert _runs(runs) == 2
        assert pool.starmap(h.die_on, [(x, 99, str(runs)) for x in range(6)]) == \
            list(range(6))


def test_timeout_stops_the_task_and_the_pool_goes_on(dask_cluster):
    _both_workers(dask_cluster)
    with polyproc.Pool(cluster=dask_cluster) as pool:
        started = time.monotonic()
        with pytest.raises(TaskTimeoutError, match=r"sleep\(60\).*timeout of 0\.5 s"):
            pool.apply(time.sleep, (60,), timeout=0.5)
        assert time.monotonic() - started < 15
        # The tasks of a chunk before and after the one that timed out run.
        it = pool.imap(h.nap, [(0, 0), (1, 60), (2, 0)], chunksize=3, timeout=1)
        assert next(it) == 0
        with pytest.raises(TaskTimeoutError, match=r"nap\(\(1, 60\)\)"):
            next(it)
        assert next(it) == 2
        assert pool.apply(h.square, (5,)) == 25


def test_the_initializer_runs_in_every_worker_process(dask_cluster):
    _both_workers(dask_cluster)
    with polyproc.Pool(cluster=dask_cluster, initializer=h.initialize,
                       initargs=("ready",)) as pool:
        assert pool.map(h.initialized, range(8), chunksize=1) == ["ready"] * 8


def test_a_main_initializer_is_seen_by_main_tasks(dask_cluster):
    script = pathlib.Path(__file__).parent / "scripts" / "cluster_main_initializer.py"
    import subprocess

    from _cluster import cluster_environment
    out = subprocess.run([sys.executable, str(script), dask_cluster], capture_output=True,
                         text=True, timeout=WAIT, env=cluster_environment())
    assert out.stdout.strip() == "['from the initializer', 'from the initializer']", \
        out.stderr


def test_maxtasksperchild_retires_each_worker(dask_cluster):
    _both_workers(dask_cluster)
    with polyproc.Pool(cluster=dask_cluster, maxtasksperchild=1) as pool:
        pids = pool.map(h.pid, range(3), chunksize=1)
    # Two workers, one chunk each: the third chunk needed a new process.
    assert len(set(pids)) == 3
    _both_workers(dask_cluster)


def test_a_worker_that_cannot_import_the_task_module_fails_it_clearly(
        dask_cluster, tmp_path, monkeypatch):
    (tmp_path / "only_here.py").write_text("def twice(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_here
    with polyproc.Pool(cluster=dask_cluster) as pool, pytest.raises(
            polyproc.SerializationError, match=r"only_here.*Dask worker tcp://127\.0\.0\.1"):
        pool.map(only_here.twice, range(3))


def test_an_unreachable_scheduler_is_named_within_the_bound(monkeypatch):
    from polyproc._pool._backends.dask import connect
    monkeypatch.setattr(connect, "CONNECT_SECONDS", 2.0)
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(ClusterError, match=f"Dask scheduler at {address}") as info:
        polyproc.Pool(cluster=address)
    assert time.monotonic() - started < 10
    assert info.value.address == address


def test_a_scheduler_that_dies_mid_map_fails_every_pending_task(tmp_path, monkeypatch):
    # A cluster of its own: the session's scheduler must live.
    import os
    import signal

    from _cluster import start_cluster, stop_cluster
    from polyproc._pool._backends.dask import connect
    monkeypatch.setattr(connect, "CONNECT_SECONDS", 2.0)
    cluster = start_cluster(tmp_path, workers=1)
    try:
        pool = polyproc.Pool(cluster=cluster.address)
        result = pool.map_async(h.nap, [(i, 60) for i in range(6)], chunksize=1)
        os.killpg(cluster.scheduler.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(ClusterError, match=f"Dask scheduler at {cluster.address}"):
            result.get(WAIT)
        assert time.monotonic() - started < 2.0 + 10
        with pytest.raises(ClusterError, match="lost the connection"):
            pool.apply(h.square, (2,))
        pool.terminate()
    finally:
        stop_cluster(cluster)


OTHER_PYTHON = pathlib.Path("/work/main/.venv-3.10/bin/python")


@pytest.mark.skipif(not OTHER_PYTHON.exists() or sys.version_info[:2] == (3, 10),
                    reason="needs a venv of another Python with Dask")
def test_workers_of_another_version_are_refused_clearly(tmp_path):
    from _cluster import start_cluster, stop_cluster
    cluster = start_cluster(tmp_path, workers=1, python=str(OTHER_PYTHON))
    try:
        with pytest.raises(ClusterError, match=r"runs other versions than this client: "
                                               r"python 3\.\d+ here, 3\.10 there"):
            polyproc.Pool(cluster=cluster.address)
    finally:
        stop_cluster(cluster)


def test_maxtasksperchild_without_a_nanny_is_refused_at_pool(tmp_path):
    from _cluster import start_cluster, stop_cluster
    cluster = start_cluster(tmp_path, workers=1, nanny=False)
    try:
        with pytest.raises(ValueError, match=r"maxtasksperchild needs Dask workers with a "
                                             r"nanny.*tcp://127\.0\.0\.1:\d+ has none"):
            polyproc.Pool(cluster=cluster.address, maxtasksperchild=3)
        with polyproc.Pool(cluster=cluster.address) as pool:   # without it: fine
            assert pool.apply(h.square, (3,)) == 9
    finally:
        stop_cluster(cluster)
