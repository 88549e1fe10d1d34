"""Executor scenarios: polyproc.Executor beside concurrent.futures and loky.

Each contender starts its own executor with 2 workers (fork start method
for the stdlib and polyproc; loky uses its own reusable executor, which
starts with loky's default method), warms it up with a few calls, and
times only the calls being measured.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import time

import polyproc

from ._harness import Scenario

WORKERS = 2
SUBMITS = 10_000
MAP_TASKS = 20_000


def trivial(x):
    return x


def _stdlib_executor():
    return concurrent.futures.ProcessPoolExecutor(
        WORKERS, mp_context=multiprocessing.get_context("fork"))


def _polyproc_executor():
    return polyproc.Executor(WORKERS, mp_context=polyproc.get_context("fork"))


def _loky_executor():
    from loky import get_reusable_executor
    return get_reusable_executor(max_workers=WORKERS)


def _submit_then_result(ex) -> None:
    futures = [ex.submit(trivial, i) for i in range(SUBMITS)]
    assert sum(f.result() for f in futures) == sum(range(SUBMITS))


def _map_chunksize_1(ex) -> None:
    assert sum(ex.map(trivial, range(MAP_TASKS), chunksize=1)) == sum(range(MAP_TASKS))


def _with_executor(make, body, shutdown=True):
    def contender() -> float:
        ex = make()
        try:
            list(ex.map(trivial, range(WORKERS * 4)))  # workers up and warm
            start = time.perf_counter()
            body(ex)
            return time.perf_counter() - start
        finally:
            if shutdown:
                ex.shutdown(wait=True)
    return contender


def scenarios() -> list[Scenario]:
    return [
        Scenario(
            "executor submit 10,000 calls then result()",
            {"stdlib": _with_executor(_stdlib_executor, _submit_then_result),
             "polyproc": _with_executor(_polyproc_executor, _submit_then_result),
             "loky": _with_executor(_loky_executor, _submit_then_result, shutdown=False)},
            work=(SUBMITS, "tasks"), target="faster than stdlib and loky"),
        Scenario(
            "executor map 20,000 trivial tasks (chunksize=1)",
            {"stdlib": _with_executor(_stdlib_executor, _map_chunksize_1),
             "polyproc": _with_executor(_polyproc_executor, _map_chunksize_1),
             "loky": _with_executor(_loky_executor, _map_chunksize_1, shutdown=False)},
            work=(MAP_TASKS, "tasks"), target="faster than stdlib", repeats=3),
    ]
