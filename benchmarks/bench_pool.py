"""Pool scenarios (issue 3's performance targets), stdlib side by side.

Each contender starts its own pool with the fork start method (unless the
scenario says otherwise), warms it up with a tiny map, and times only the
call being measured.  mpire and loky run beside them where they have the
call.
"""
from __future__ import annotations

import multiprocessing
import time
import warnings

import polyproc

from polyproc._cli.bench import with_pool

from ._harness import Scenario

WORKERS = 2


def trivial(x):
    return x


def burn(n):
    """About n * 1 ms... of pure-Python arithmetic (CPU-bound)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


BURN_5MS = None


def _calibrate_burn() -> int:
    global BURN_5MS
    if BURN_5MS is None:
        n = 20_000
        start = time.perf_counter()
        burn(n)
        took = time.perf_counter() - start
        BURN_5MS = max(1000, int(n * 0.005 / took))
    return BURN_5MS


def _with_pool(make_pool, body):
    """A contender (``polyproc._cli.bench.with_pool``, shared with the
    shipped scenarios): warmed with four trivial tasks per worker."""
    return with_pool(make_pool, body, WORKERS * 4)


def _std_pool():
    return multiprocessing.get_context("fork").Pool(WORKERS)


def _poly_pool():
    return polyproc.get_context("fork").Pool(WORKERS)


def _poly_pool_insights():
    # The cost of insights=True (why it is off by default): docs/observe.md.
    return polyproc.get_context("fork").Pool(WORKERS, insights=True)


def _mpire_contender(body):
    def contender() -> float:
        from mpire import WorkerPool
        with WorkerPool(n_jobs=WORKERS, start_method="fork") as pool:
            pool.map(trivial, range(WORKERS * 4))
            start = time.perf_counter()
            body(pool)
            return time.perf_counter() - start
    return contender


def _imap_unordered(pool):
    n = sum(1 for _ in pool.imap_unordered(trivial, range(20_000)))
    assert n == 20_000


def _apply_async(pool):
    results = [pool.apply_async(trivial, (i,)) for i in range(10_000)]
    assert sum(r.get() for r in results) == sum(range(10_000))


def _map_trivial(pool):
    assert len(pool.map(trivial, range(200_000))) == 200_000


_LIST_INPUT = list(range(200_000))


def _map_trivial_list(pool):
    assert len(pool.map(trivial, _LIST_INPUT)) == 200_000


def _map_cpu(pool):
    n = _calibrate_burn()
    pool.map(burn, [n] * 200)


def _two_processes_cpu() -> float:
    """The physical limit: two plain processes each doing half of the work."""
    n = _calibrate_burn()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_burn_many, args=(n, 100)) for _ in range(2)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return time.perf_counter() - start


def _burn_many(n, count):
    for _ in range(count):
        burn(n)


def _loky_apply(n_tasks):
    def contender() -> float:
        from loky import get_reusable_executor
        ex = get_reusable_executor(max_workers=WORKERS)
        list(ex.map(trivial, range(WORKERS * 4)))
        start = time.perf_counter()
        futures = [ex.submit(trivial, i) for i in range(n_tasks)]
        assert sum(f.result() for f in futures) == sum(range(n_tasks))
        return time.perf_counter() - start
    return contender


def _start_first_result_close(make_pool):
    def contender() -> float:
        start = time.perf_counter()
        pool = make_pool()
        assert pool.apply(trivial, (1,)) == 1
        pool.close()
        pool.join()
        return time.perf_counter() - start
    return contender


def _start_while_another_runs(make_pool):
    """Start + first result + close of a pool made while another pool of
    the same library runs: polyproc pauses the other's PoolScheduler thread
    for the forks (_process/fork_pause.py), the stdlib forks with its
    threads running (Python 3.12+ warns; filtered here, on purpose)."""
    def contender() -> float:
        with make_pool() as other:
            assert other.apply(trivial, (0,)) == 0
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", ".*is multi-threaded", DeprecationWarning)
                return _start_first_result_close(make_pool)()
    return contender


def scenarios() -> list[Scenario]:
    _calibrate_burn()
    return [
        Scenario(
            "pool imap_unordered 20,000 trivial tasks (default chunksize)",
            {"stdlib": _with_pool(_std_pool, _imap_unordered),
             "polyproc": _with_pool(_poly_pool, _imap_unordered),
             "polyproc insights=True": _with_pool(_poly_pool_insights, _imap_unordered),
             "mpire": _mpire_contender(
                 lambda p: sum(1 for _ in p.imap_unordered(trivial, range(20_000))))},
            work=(20_000, "tasks"), target=">= 10x stdlib"),
        Scenario(
            "pool apply_async 10,000 calls then get",
            {"stdlib": _with_pool(_std_pool, _apply_async),
             "polyproc": _with_pool(_poly_pool, _apply_async),
             "polyproc insights=True": _with_pool(_poly_pool_insights, _apply_async),
             "loky submit": _loky_apply(10_000)},
            work=(10_000, "tasks"), target=">= 3x stdlib"),
        Scenario(
            "pool map 200,000 trivial tasks",
            {"stdlib": _with_pool(_std_pool, _map_trivial),
             "polyproc": _with_pool(_poly_pool, _map_trivial),
             "mpire": _mpire_contender(lambda p: p.map(trivial, range(200_000)))},
            work=(200_000, "tasks"), target=">= 1.2x stdlib"),
        Scenario(
            "pool map 200,000 trivial tasks (a list, not a range)",
            {"stdlib": _with_pool(_std_pool, _map_trivial_list),
             "polyproc": _with_pool(_poly_pool, _map_trivial_list)},
            work=(200_000, "tasks"),
            notes=["a range input is sliced into ranges (a few bytes per chunk); "
                   "a list has to be pickled item by item, as in the stdlib"]),
        Scenario(
            "pool map 200 CPU-bound tasks of ~5 ms",
            {"two processes": _two_processes_cpu,
             "stdlib": _with_pool(_std_pool, _map_cpu),
             "polyproc": _with_pool(_poly_pool, _map_cpu)},
            baseline="two processes", work=(200, "tasks"),
            target="polyproc within 5% of two processes (ratio >= 0.95)"),
        Scenario(
            "pool start + first result + close (fork)",
            {"stdlib": _start_first_result_close(_std_pool),
             "polyproc": _start_first_result_close(_poly_pool)},
            target="polyproc no slower than stdlib (ratio >= 1)"),
        Scenario(
            "pool start + first result + close (fork) while another pool runs",
            {"stdlib": _start_while_another_runs(_std_pool),
             "polyproc": _start_while_another_runs(_poly_pool)},
            notes=[("polyproc pauses the other pool's thread for its forks; "
                    "the stdlib forks a multi-threaded process")]),
        Scenario(
            "pool start + first result + close (spawn)",
            {"stdlib": _start_first_result_close(
                lambda: multiprocessing.get_context("spawn").Pool(WORKERS)),
             "polyproc": _start_first_result_close(
                lambda: polyproc.get_context("spawn").Pool(WORKERS))},
            target="polyproc no slower than stdlib (ratio >= 1)", repeats=3),
    ]
