"""Cluster scenarios: Pool(cluster=...) beside raw Dask on the same cluster.

The cluster is a ``distributed.LocalCluster`` of 2 worker processes with
one thread each and nannies (real processes, as ``dask worker --nworkers
2`` starts them), started once for all the scenarios of this module.  A
polyproc Pool is made fresh for each repetition, outside the timed part, so
that what it learns (task times, scattered arrays) never carries over from
one repetition to the next; the timed part is the call alone.
"""
from __future__ import annotations

import atexit
import time

import polyproc

from ._harness import Scenario

WORKERS = 2
TRIVIAL_TASKS = 2_000
CPU_TASKS = 200
CPU_SECONDS = 0.005
ARRAYS = 8
ARRAY_BYTES = 64 * 2**20

_cluster: dict = {}


def _client():
    """The module's cluster and client, started on first use."""
    if not _cluster:
        from distributed import Client, LocalCluster
        cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
        _cluster["cluster"] = cluster
        _cluster["client"] = Client(cluster, set_as_default=False)
        atexit.register(_close)
    return _cluster["client"]


def _close() -> None:
    _cluster["client"].close()
    _cluster["cluster"].close()


def trivial(x):
    return x


def spin(x):
    """About CPU_SECONDS of CPU work."""
    end = time.thread_time() + CPU_SECONDS
    while time.thread_time() < end:
        pass
    return x


def total(array) -> float:
    return float(array.sum())


# -- contenders ----------------------------------------------------------------

def _dask_map(fn, items) -> float:
    client = _client()
    client.submit(trivial, 0, pure=False).result()   # connected and warm
    start = time.perf_counter()
    results = client.gather(client.map(fn, items, pure=False))
    seconds = time.perf_counter() - start
    assert len(results) == len(items)
    return seconds


def _dask_scatter_map(fn, items) -> float:
    client = _client()
    client.submit(trivial, 0, pure=False).result()
    start = time.perf_counter()
    futures = client.scatter(list(items), hash=False)
    results = client.gather(client.map(fn, futures, pure=False))
    seconds = time.perf_counter() - start
    assert len(results) == len(items)
    return seconds


def _polyproc_cluster_map(fn, items, **options) -> float:
    with polyproc.Pool(cluster=_client()) as pool:
        pool.apply(trivial, (0,))   # the workers have loaded polyproc
        start = time.perf_counter()
        results = pool.map(fn, items, **options)
        seconds = time.perf_counter() - start
    assert len(results) == len(items)
    return seconds


def _polyproc_local_map(fn, items) -> float:
    with polyproc.Pool(WORKERS) as pool:
        pool.map(trivial, range(WORKERS * 4))   # workers up and warm
        start = time.perf_counter()
        results = pool.map(fn, items)
        seconds = time.perf_counter() - start
    assert len(results) == len(items)
    return seconds


def _local_cluster_first_result() -> float:
    start = time.perf_counter()
    pool = polyproc.Pool(WORKERS, cluster="local")
    try:
        assert pool.apply(trivial, (1,)) == 1
        return time.perf_counter() - start
    finally:
        pool.terminate()


def _dask_local_cluster_first_result() -> float:
    from distributed import Client, LocalCluster
    start = time.perf_counter()
    cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    client = Client(cluster, set_as_default=False)
    try:
        assert client.submit(trivial, 1).result() == 1
        return time.perf_counter() - start
    finally:
        client.close()
        cluster.close()


def _arrays():
    import numpy as np
    return [np.full(ARRAY_BYTES // 8, i, dtype=np.float64) for i in range(ARRAYS)]


def scenarios() -> list[Scenario]:
    items = list(range(TRIVIAL_TASKS))
    cpu_items = list(range(CPU_TASKS))
    arrays: list = []

    def lazily(body):
        # The arrays (512 MB) are made only if this scenario runs.
        def contender() -> float:
            if not arrays:
                arrays.extend(_arrays())
            return body(arrays)
        return contender

    return [
        Scenario(
            "cluster map 2,000 trivial tasks",
            {"dask client.map+gather": lambda: _dask_map(trivial, items),
             "polyproc Pool(cluster)": lambda: _polyproc_cluster_map(trivial, items)},
            baseline="dask client.map+gather", work=(TRIVIAL_TASKS, "tasks"),
            target=">= 10x client.map", repeats=3),
        Scenario(
            "cluster map 200 CPU-bound tasks of 5 ms (2 worker processes)",
            {"polyproc local Pool(2)": lambda: _polyproc_local_map(spin, cpu_items),
             "polyproc Pool(cluster)": lambda: _polyproc_cluster_map(spin, cpu_items)},
            baseline="polyproc local Pool(2)", work=(CPU_TASKS, "tasks"),
            target="within 10% of the local backend (>= 0.9x)", repeats=3),
        Scenario(
            "cluster map over 8 x 64 MB NumPy arrays",
            {"dask client.map": lazily(lambda a: _dask_map(total, a)),
             "dask scatter by hand": lazily(lambda a: _dask_scatter_map(total, a)),
             "polyproc Pool(cluster)": lazily(
                 lambda a: _polyproc_cluster_map(total, a, chunksize=1))},
            baseline="dask client.map", work=(ARRAYS * ARRAY_BYTES, "B"),
            target="faster than client.map, near a scatter by hand", repeats=3),
        Scenario(
            "Pool(cluster='local') start to first result (2 workers)",
            {"dask LocalCluster+Client": _dask_local_cluster_first_result,
             "polyproc Pool(cluster='local')": _local_cluster_first_result},
            baseline="dask LocalCluster+Client", target="measure; in docs/cluster.md",
            repeats=3),
    ]
