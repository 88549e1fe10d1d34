"""Pool(cluster=...) and Executor(cluster=...) on a real Dask cluster.

The cluster is the session's (conftest.py ``dask_cluster``: a ``dask
scheduler`` and a ``dask worker --nworkers 2 --nthreads 1`` with nannies,
as subprocesses on 127.0.0.1).  Faults (killed workers, timeouts) are in
test_cluster_faults.py.
"""
from __future__ import annotations

import collections
import itertools
import os
import subprocess
import sys
import threading

import pytest

import polyproc
from polyproc import ClusterDependencyError

import _cluster_helpers as h
from conftest import expect_fork_warning

WAIT = 30


@pytest.fixture
def pool(dask_cluster):
    with polyproc.Pool(cluster=dask_cluster) as p:
        yield p


def test_processes_default_to_the_clusters_threads(pool):
    assert pool._processes == 2
    assert "pool_size=2" in repr(pool)


def test_apply_map_starmap_and_their_async_twins(pool):
    assert pool.apply(divmod, (7, 2)) == (3, 1)
    assert pool.apply_async(h.square, (9,)).get(WAIT) == 81
    assert pool.map(h.square, range(100)) == [x * x for x in range(100)]
    assert pool.map_async(h.square, range(10), chunksize=3).get(WAIT) == \
        [x * x for x in range(10)]
    assert pool.starmap(divmod, [(7, 2), (9, 4)]) == [(3, 1), (2, 1)]
    assert pool.starmap_async(pow, [(2, 3), (3, 2)]).get(WAIT) == [8, 9]
    assert list(pool.imap(h.square, range(20), chunksize=3)) == [x * x for x in range(20)]
    assert sorted(pool.imap_unordered(h.square, iter(range(20)))) == \
        sorted(x * x for x in range(20))


def test_identical_calls_each_run(pool):
    # Dask's default pure=True would run os.urandom(16) once for all four.
    values = pool.map(os.urandom, [16] * 4, chunksize=1)
    assert len(set(values)) == 4


def test_lambdas_and_closures_run_on_the_cluster(pool):
    offset = 10
    assert pool.map(lambda x: x + offset, range(5)) == [10, 11, 12, 13, 14]
    assert pool.apply(lambda: offset * 2) == 20


def test_exceptions_keep_their_type_and_the_remote_traceback(pool):
    with pytest.raises(h.TaskFailed, match="task 3 failed on purpose") as info:
        pool.starmap(h.fail_on, [(x, 3) for x in range(6)])
    assert "remote.py" in str(info.value.__cause__) and "fail_on" in str(info.value.__cause__)
    # The other tasks of the call were not lost with it.
    result = pool.starmap_async(h.fail_on, [(x, 99) for x in range(6)])
    assert result.get(WAIT) == list(range(6))


def test_callbacks_run_in_one_polyproc_thread_in_completion_order(pool):
    seen: list[tuple[str, object]] = []
    done = threading.Event()

    def callback(value):
        seen.append((threading.current_thread().name, value))
        if len(seen) == 6:
            done.set()

    results = [pool.apply_async(h.square, (i,), callback=callback) for i in range(5)]
    pool.apply_async(h.fail_on, (1, 1), error_callback=callback)
    assert done.wait(WAIT)
    assert {name for name, _ in seen} == {"ClusterScheduler"}
    assert sorted(v for _, v in seen if isinstance(v, int)) == [0, 1, 4, 9, 16]
    assert [r.get(WAIT) for r in results] == [0, 1, 4, 9, 16]


def test_imap_of_an_endless_generator_reads_ahead_a_bounded_amount(pool):
    taken = itertools.count()

    def endless():
        while True:
            yield next(taken)

    it = pool.imap(h.square, endless())
    assert [next(it) for _ in range(50)] == [x * x for x in range(50)]
    read = next(taken)
    # What the feeder may read ahead: 4 chunks per worker of up to 64 tasks.
    assert read < 50 + 4 * 2 * 64 + 2


def test_close_then_join_finishes_the_work(dask_cluster):
    p = polyproc.Pool(cluster=dask_cluster)
    result = p.map_async(h.square, range(10))
    p.close()
    p.join()
    assert result.get(0) == [x * x for x in range(10)]
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply(h.square, (1,))


def test_terminate_fails_what_is_pending(dask_cluster, tmp_path):
    p = polyproc.Pool(cluster=dask_cluster)
    # Short: Dask cannot stop the task once it runs, and the worker it
    # runs on takes no other task of the session's cluster until it ends.
    slow = p.apply_async(h.announce_and_sleep, (str(tmp_path / "pid"), 1))
    p.terminate()
    with pytest.raises(polyproc.ProcessError, match="terminated"):
        slow.get(WAIT)
    p.join()


def test_a_users_client_is_never_closed(dask_cluster):
    from distributed import Client
    with Client(dask_cluster, set_as_default=False) as client:
        with polyproc.Pool(cluster=client) as p:
            assert p.map(h.square, range(4)) == [0, 1, 4, 9]
        assert client.status == "running"
        assert client.submit(h.square, 3).result(WAIT) == 9


def test_progress_bar(pool, capsys):
    assert pool.map(h.square, range(10), progress=True) == [x * x for x in range(10)]
    assert "10/10" in capsys.readouterr().err


def test_executor_submit_and_map(dask_cluster):
    with polyproc.Executor(cluster=dask_cluster) as ex:
        assert ex._max_workers == 2
        assert ex.submit(h.square, 7).result(WAIT) == 49
        assert list(ex.map(h.square, range(6), chunksize=2)) == [0, 1, 4, 9, 16, 25]
        with pytest.raises(h.TaskFailed):
            ex.submit(h.fail_on, 2, 2).result(WAIT)


# -- the tutorial programs ----------------------------------------------------

def test_tutorial_a_pool_of_apply_calls(pool):
    results = [pool.apply_async(pow, (x, 2)) for x in range(10)]
    assert [r.get(timeout=WAIT) for r in results] == [x ** 2 for x in range(10)]
    assert pool.apply(sum, ([1, 2, 3],)) == 6


# -- without Dask ----------------------------------------------------------------

def test_without_dask_the_error_names_the_extra():
    code = ("import sys; sys.modules['distributed'] = None\n"
            "import polyproc\n"
            "try:\n"
            "    polyproc.Pool(cluster='tcp://127.0.0.1:1')\n"
            "except ImportError as e:\n"
            "    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=WAIT, env={**os.environ, "PYTHONPATH": _root()})
    assert out.stdout.startswith("ClusterDependencyError"), out.stderr
    assert "pip install polyproc[dask]" in out.stdout
    assert issubclass(ClusterDependencyError, ImportError)


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tutorial_producers_and_consumers_share_a_manager_queue(pool):
    # The tutorial's Manager(), unchanged: under fork (the default before
    # Python 3.14) it forks its server process while the Dask client's
    # threads run in this process (docs/cluster.md: what `import
    # distributed` leaves), as it would in the user's program.
    with expect_fork_warning(required=polyproc.get_start_method() == "fork"):
        manager = polyproc.Manager()
    with manager:
        queue = manager.Queue()
        producers = [pool.apply_async(h.put_all, (queue, list(range(i * 10, i * 10 + 10))))
                     for i in range(2)]
        consumer = pool.apply_async(h.take, (queue, 20))
        assert [p.get(WAIT) for p in producers] == [10, 10]
        assert sorted(consumer.get(WAIT)) == list(range(20))


def test_proxies_carry_their_authkey_only_over_loopback_or_tls(pool):
    from polyproc._pool._backends.dask import connect
    from polyproc._pool.chunks import Transport
    assert pool._transport is Transport.IN_BAND_TRUSTED   # all on 127.0.0.1
    assert connect._is_loopback("tcp://127.0.0.1:8786")
    assert connect._is_loopback("tcp://[::1]:8786")
    assert not connect._is_loopback("tcp://10.1.2.3:8786")
    assert not connect._is_loopback("tcp://scheduler.example.org:8786")


def test_large_arrays_are_scattered_once(pool):
    np = pytest.importorskip("numpy")
    big = np.arange(1 << 18, dtype=np.float64)          # 2 MiB
    sums = pool.starmap(np.dot, [(big, big)] * 4 + [(big, np.ones_like(big))], chunksize=1)
    assert sums[:4] == [float(np.dot(big, big))] * 4
    assert sums[4] == float(big.sum())
    backend = pool._backend
    assert len(backend._scatters) == 2                   # big and ones, once each
    assert backend._scatter_bytes == 2 * big.nbytes
    # Tasks may change their arrays in place: each gets its own copy.
    assert pool.map(h.negate_in_place, [big] * 3, chunksize=1) == [-5.0] * 3
    assert big[5] == 5.0


def test_a_local_cluster_is_the_pools_own(dask_cluster):
    with polyproc.Pool(2, cluster="local") as p:
        assert p.apply(h.square, (6,)) == 36
        cluster = p._backend._link.cluster
        assert cluster is not None
    p.join()
    assert cluster.status.name == "closed"


def test_an_initializer_that_raises_fails_the_pool_clearly(dask_cluster):
    with pytest.raises(polyproc.InitializerError, match=r"fail_on\(\) raised TaskFailed"):
        polyproc.Pool(cluster=dask_cluster, initializer=h.fail_on, initargs=(1, 1))


def test_a_cancelled_call_drops_its_tasks_and_the_pool_goes_on(pool):
    # What Ctrl-C in map() does (SinkRegistry.cancel): the queued chunks are
    # dropped, those on the cluster cancelled (a running one finishes there).
    result = pool.map_async(h.nap, [(i, 1.0) for i in range(40)], chunksize=1)
    pool._registry.cancel(result)
    with pytest.raises(polyproc.ProcessError, match="cancelled"):
        result.get(WAIT)
    assert pool.apply(h.square, (3,)) == 9
    assert pool._backend._pending == collections.deque()
