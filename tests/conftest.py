"""Shared fixtures: every test body can be run on each start method."""
from __future__ import annotations

import pytest

import polyproc

START_METHODS = [m for m in ("fork", "forkserver", "spawn")
                 if m in polyproc.get_all_start_methods()]


@pytest.fixture(params=START_METHODS)
def ctx(request):
    """A polyproc context for each start method."""
    return polyproc.get_context(request.param)


@pytest.fixture(params=["fork", "spawn"])
def ctx_fs(request):
    """fork and spawn only: for slower tests where forkserver adds nothing new."""
    return polyproc.get_context(request.param)


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """The scheduler address of a real Dask cluster, one for the whole run.

    A ``dask scheduler`` and a ``dask worker --nworkers 2 --nthreads 1``
    (with nannies) on 127.0.0.1, as subprocesses (tests/_cluster.py);
    skipped where Dask is not installed.
    """
    pytest.importorskip("distributed")
    from _cluster import start_cluster, stop_cluster
    cluster = start_cluster(tmp_path_factory.mktemp("dask"))
    yield cluster.address
    stop_cluster(cluster)


def _uses_a_cluster(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return (item.path.name.startswith("test_cluster")
            or "dask_cluster" in getattr(item, "fixturenames", ())
            # a parameter that asks for the cluster by getfixturevalue
            or (callspec is not None
                and any(isinstance(value, str) and value == "dask"
                        for value in callspec.params.values())))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The cluster tests run last.  A process that has used a Dask client
    # keeps distributed's threads (its IO loop) and tblib's exception
    # reducers for good: every later fork Pool would be made in a
    # multi-threaded process (Python 3.12+ warns) and the tests of the
    # single-threaded path could not run as such.  Their relative order is
    # kept.
    items.sort(key=_uses_a_cluster)
