"""A real Dask cluster for the cluster tests: ``dask scheduler`` and ``dask worker``.

One scheduler and one ``dask worker --nworkers 2 --nthreads 1`` (with its
nannies), started as subprocesses on 127.0.0.1 with ports the OS picks, once
for the whole test run (``conftest.py``'s session fixture ``dask_cluster``)
and stopped at its end: each is the leader of its own process group, and the
group is killed, so no nanny or worker outlives the run.  The scheduler
writes its address into a ``--scheduler-file``, which is how the fixture
learns it; the workers get ``PYTHONPATH`` with the repository root, so that
they import this checkout's ``polyproc`` and the tests' helper modules
(``_cluster_helpers``: the task functions of the tests).

Nothing here is a fake: the tests kill worker processes with real signals
and the nannies restart them.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import NamedTuple

ROOT = pathlib.Path(__file__).resolve().parent.parent
START_SECONDS = 60.0   # a loaded machine: both workers are usually there in about 1 s
WORKERS = 2


class RunningCluster(NamedTuple):
    """A started cluster: its scheduler's address and its processes."""

    address: str
    scheduler: subprocess.Popen
    workers: subprocess.Popen
    directory: pathlib.Path


def cluster_environment() -> dict[str, str]:
    """The environment of the scheduler and workers: this checkout first on
    the path, no dashboard noise, quick heartbeats."""
    env = dict(os.environ)
    inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths = [str(ROOT), str(ROOT / "tests"), *inherited]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _dask(module: str, *args: str, log: pathlib.Path,
          python: str = sys.executable) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [python, "-m", f"distributed.cli.{module}", *args],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=cluster_environment(), cwd=str(ROOT), start_new_session=True)


def start_cluster(directory: pathlib.Path, workers: int = WORKERS,
                  python: str = sys.executable, nanny: bool = True) -> RunningCluster:
    """Start a scheduler and *workers* worker processes; return once all are connected.

    *python*: the interpreter they run (another one makes a cluster whose
    versions differ from the client's); *nanny*: False for workers
    without one (``--no-nanny``).

    Raises ``RuntimeError`` with the processes' output if they are not
    ready within ``START_SECONDS``.
    """
    scheduler_file = directory / "scheduler.json"
    scheduler = _dask("dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                      "--no-dashboard", "--scheduler-file", str(scheduler_file),
                      log=directory / "scheduler.log", python=python)
    count, workers = workers, None
    try:
        address = _wait_for_address(scheduler_file, scheduler, directory)
        workers = _dask("dask_worker", address, "--nworkers", str(count),
                        "--nthreads", "1", "--nanny" if nanny else "--no-nanny",
                        "--host", "127.0.0.1",
                        "--no-dashboard", "--memory-limit", "0",
                        "--local-directory", str(directory / "workers"),
                        log=directory / "workers.log", python=python)
        cluster = RunningCluster(address, scheduler, workers, directory)
        wait_for_workers(address, count, START_SECONDS)
    except BaseException:
        stop_cluster(RunningCluster("", scheduler, workers, directory))
        raise
    return cluster


def _wait_for_address(scheduler_file: pathlib.Path, scheduler: subprocess.Popen,
                      directory: pathlib.Path) -> str:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if scheduler.poll() is not None:
            raise RuntimeError("dask scheduler exited: "
                               + (directory / "scheduler.log").read_text())
        try:
            return json.loads(scheduler_file.read_text())["address"]
        except (FileNotFoundError, ValueError, KeyError):
            time.sleep(0.05)  # polling a file another process writes
    raise RuntimeError("dask scheduler did not write its address in time")


def wait_for_workers(address: str, count: int, seconds: float) -> None:
    """Return once *count* workers are connected to *address* (``TimeoutError`` after *seconds*)."""
    from distributed import Client
    with Client(address, timeout=seconds, set_as_default=False) as client:
        client.wait_for_workers(count, timeout=seconds)


def stop_cluster(cluster: RunningCluster) -> None:
    """Kill the workers' and the scheduler's process groups; wait for them."""
    for process in (cluster.workers, cluster.scheduler):
        if process is None:
            continue
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(10)
