"""``python -m polyproc bench [--quick]``: polyproc beside the stdlib, on this machine.

The scenarios users meet most (Pool map, imap_unordered and apply_async,
CPU-bound work, Executor submit and map, a Queue between two processes,
Process start, a managed dict, a pool's start-up), each run by the stdlib
and by polyproc in the same run, interleaved, with the harness of
``polyproc/_cli/harness.py``; one table row per scenario: median times and
the speed-up (stdlib time / polyproc time, above 1 when polyproc is faster).

They ship in the package, so that an installed polyproc can measure itself
where it runs.  The full set, with peers (loky, mpire, faster-fifo), large
buffers and the issues' targets, is the source checkout's ``benchmarks/``
(``make bench``).  ``--quick`` divides the work by 10 and repeats each
contender 3 times: under a minute on a 2-core machine.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

import polyproc

from .harness import Result, Scenario, run_scenario, timed

__all__ = ["add_arguments", "main", "scenarios"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``bench``."""
    parser.add_argument("--quick", action="store_true",
                        help="a tenth of the work, 3 repetitions: under a minute")
    parser.add_argument("--repeat", type=int, metavar="N",
                        help="repetitions per contender, median reported "
                             "(default: 5, or 3 with --quick)")
    parser.add_argument("--only", nargs="+", default=[], metavar="WORD",
                        help="only the scenarios whose name contains one of these words")
    parser.add_argument("--workers", type=int, metavar="N",
                        default=min(4, polyproc.process_cpu_count() or 1),
                        help="worker processes per pool (default: this machine's "
                             "CPUs, at most 4: %(default)s)")
    parser.add_argument("--start-method", choices=polyproc.get_all_start_methods(),
                        default=polyproc.get_start_method(),
                        help="start method of every process (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    """Run the selected scenarios, printing a row as each one ends; 0, or 1
    if a contender failed."""
    repeats = args.repeat or (3 if args.quick else 5)
    setup = Setup(args.start_method, args.workers, 10 if args.quick else 1)
    chosen = [s for s in scenarios(setup)
              if not args.only or any(word in s.name for word in args.only)]
    if not chosen:
        print(f"python -m polyproc bench: no scenario matches {' '.join(args.only)!r}",
              file=sys.stderr)
        return 2
    print(f"polyproc {polyproc.__version__} bench{' --quick' if args.quick else ''}: "
          f"{setup.workers} workers, start method {setup.method!r}, Python "
          f"{sys.version.split()[0]}, median of {repeats}", flush=True)
    print_header()
    failed = False
    started = time.perf_counter()
    for scenario in chosen:
        result = run_scenario(scenario, repeats)
        print_row(result)
        failed = failed or bool(result.errors)
    print(f"speed-up: stdlib time / polyproc time (above 1: polyproc is faster); "
          f"{time.perf_counter() - started:.0f} s in all.  "
          "The full set with peers: make bench (a source checkout).", flush=True)
    return 1 if failed else 0


# --- the table -------------------------------------------------------------

NAME_WIDTH = 46


def print_header(out: TextIO = sys.stdout) -> None:
    print(f"{'scenario':<{NAME_WIDTH}} {'stdlib':>10} {'polyproc':>10} {'speed-up':>9}",
          file=out, flush=True)


def print_row(result: Result, out: TextIO = sys.stdout) -> None:
    """One scenario: both medians in ms and the ratio, or what failed."""
    cells = []
    for name in ("stdlib", "polyproc"):
        median = result.medians.get(name)
        cells.append(f"{median * 1e3:7.1f} ms" if median is not None else f"{'failed':>10}")
    ratio = result.ratio("polyproc")
    speed_up = f"{ratio:8.2f}x" if ratio is not None else f"{'-':>9}"
    print(f"{result.scenario.name:<{NAME_WIDTH}} {cells[0]:>10} {cells[1]:>10} {speed_up}",
          file=out, flush=True)
    for name, error in result.errors.items():
        print(f"  {name} failed: {error}", file=out, flush=True)


# --- the workloads (module level: spawned workers import them by name) ----

def trivial(x: int) -> int:
    return x


def burn(n: int) -> int:
    """Pure-Python arithmetic, about n / 4,000 ms on a 2020s core."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def produce(queue: Any, count: int, payload: bytes) -> None:
    for _ in range(count):
        queue.put(payload)


# --- the scenarios -----------------------------------------------------------

@dataclass
class Setup:
    """What every scenario is given: the start method, the pools' size, and
    the divisor of the work (10 with ``--quick``)."""
    method: str
    workers: int
    divisor: int

    def n(self, full: int) -> int:
        return max(1, full // self.divisor)

    def std(self) -> Any:
        return multiprocessing.get_context(self.method)

    def poly(self) -> Any:
        return polyproc.get_context(self.method)


def with_pool(make: Callable[[], Any], body: Callable[[Any], object],
               warm: int) -> Callable[[], float]:
    """A contender: start a pool (untimed), warm its workers with *warm*
    trivial tasks, time *body* (benchmarks/bench_pool.py uses it too)."""
    def contender() -> float:
        pool = make()
        try:
            pool.map(trivial, range(warm))
            start = time.perf_counter()
            body(pool)
            return time.perf_counter() - start
        finally:
            pool.terminate()
            pool.join()
    return contender


def _pair(setup: Setup, name: str, body: Callable[[Any], object], kind: str = "Pool",
          work: tuple[float, str] | None = None) -> Scenario:
    """The scenario *name*: *body* on the stdlib's pool (or executor) and on polyproc's."""
    warm = setup.workers * 4
    if kind == "Pool":
        makers = {"stdlib": lambda: setup.std().Pool(setup.workers),
                  "polyproc": lambda: setup.poly().Pool(setup.workers)}
    else:
        makers = {"stdlib": lambda: _StdExecutorAsPool(setup),
                  "polyproc": lambda: _PolyExecutorAsPool(setup)}
    return Scenario(name, {k: with_pool(make, body, warm) for k, make in makers.items()},
                    work=work)


class _ExecutorAsPool:
    """An executor with the two calls ``with_pool`` makes of a pool."""

    executor: concurrent.futures.Executor

    def map(self, fn: Callable[[int], int], items: range) -> list[int]:
        return list(self.executor.map(fn, items))

    def terminate(self) -> None:
        self.executor.shutdown(wait=True)

    def join(self) -> None:
        pass


class _StdExecutorAsPool(_ExecutorAsPool):
    def __init__(self, setup: Setup):
        self.executor = concurrent.futures.ProcessPoolExecutor(
            setup.workers, mp_context=setup.std())


class _PolyExecutorAsPool(_ExecutorAsPool):
    def __init__(self, setup: Setup):
        self.executor = polyproc.Executor(setup.workers, mp_context=setup.poly())


def _queue_contender(make_context: Callable[[], Any], count: int) -> Callable[[], float]:
    """64-byte messages from a child to the parent, timed from the first one."""
    def contender() -> float:
        ctx = make_context()
        queue = ctx.Queue()
        child = ctx.Process(target=produce, args=(queue, count + 1, b"x" * 64))
        child.start()
        try:
            queue.get(timeout=60)    # the child is up: time the stream only
            start = time.perf_counter()
            for _ in range(count):
                queue.get(timeout=60)
            return time.perf_counter() - start
        finally:
            child.join()
    return contender


def _process_contender(make_context: Callable[[], Any], count: int) -> Callable[[], float]:
    def contender() -> float:
        ctx = make_context()
        start = time.perf_counter()
        for _ in range(count):
            child = ctx.Process(target=trivial, args=(0,))
            child.start()
            child.join()
        return time.perf_counter() - start
    return contender


def _manager_contender(make_context: Callable[[], Any], count: int) -> Callable[[], float]:
    def contender() -> float:
        with make_context().Manager() as manager:
            shared = manager.dict()
            start = time.perf_counter()
            for i in range(count):
                shared[i % 64] = i
                shared[i % 64]
            return time.perf_counter() - start
    return contender


def _start_first_result_close(make_context: Callable[[], Any],
                              workers: int) -> Callable[[], float]:
    def contender() -> float:
        start = time.perf_counter()
        pool = make_context().Pool(workers)
        pool.apply(trivial, (1,))
        pool.close()
        pool.join()
        return time.perf_counter() - start
    return contender


def _calibrated_burn(seconds: float) -> int:
    """The ``burn`` argument that takes about *seconds* here (the fastest
    of three timings: a busy machine only ever slows one down)."""
    n = 20_000
    took = min(timed(lambda: burn(n)) for _ in range(3))
    return max(1000, int(n * seconds / took))


def scenarios(setup: Setup) -> list[Scenario]:
    """The shipped scenarios, their work divided by ``setup.divisor``."""
    maps, imaps, applies = setup.n(200_000), setup.n(20_000), setup.n(10_000)
    cpu_tasks, burn_5ms = setup.n(200), _calibrated_burn(0.005)
    submits, messages = setup.n(10_000), setup.n(100_000)
    starts, calls = setup.n(50), setup.n(10_000)
    both = {"stdlib": setup.std, "polyproc": setup.poly}
    return [
        _pair(setup, f"Pool.map, {maps:,} trivial tasks",
              lambda pool: pool.map(trivial, range(maps)), work=(maps, "tasks")),
        _pair(setup, f"Pool.imap_unordered, {imaps:,} trivial tasks",
              lambda pool: sum(1 for _ in pool.imap_unordered(trivial, range(imaps))),
              work=(imaps, "tasks")),
        _pair(setup, f"Pool.apply_async, {applies:,} calls",
              lambda pool: [r.get() for r in [pool.apply_async(trivial, (i,))
                                              for i in range(applies)]],
              work=(applies, "tasks")),
        _pair(setup, f"Pool.map, {cpu_tasks} CPU-bound tasks of ~5 ms",
              lambda pool: pool.map(burn, [burn_5ms] * cpu_tasks), work=(cpu_tasks, "tasks")),
        _pair(setup, f"Executor submit + result, {submits:,} calls",
              lambda ex: [f.result() for f in [ex.executor.submit(trivial, i)
                                               for i in range(submits)]],
              kind="Executor", work=(submits, "tasks")),
        _pair(setup, f"Executor.map, {imaps:,} tasks (chunksize=1)",
              lambda ex: list(ex.executor.map(trivial, range(imaps))),
              kind="Executor", work=(imaps, "tasks")),
        Scenario(f"Queue, {messages:,} 64-byte messages",
                 {k: _queue_contender(make, messages) for k, make in both.items()},
                 work=(messages, "messages")),
        Scenario(f"Process start + join, x{starts}",
                 {k: _process_contender(make, starts) for k, make in both.items()}),
        Scenario(f"managed dict set + get, {calls:,} pairs",
                 {k: _manager_contender(make, calls) for k, make in both.items()},
                 work=(calls, "calls")),
        Scenario("Pool start + first result + close",
                 {k: _start_first_result_close(make, setup.workers)
                  for k, make in both.items()}),
    ]
