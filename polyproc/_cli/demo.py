"""The main job: ``python -m polyproc demo`` (``make demo``).

Runs real work three ways (serially in this process, with the stdlib's
``multiprocessing.Pool`` and with ``polyproc.Pool``), checks that the
answers agree, and prints one table row per section: times and speed-ups,
or what happened when something went wrong.

Each section is a function returning a ``Row``; ``SECTIONS`` lists them in
order, so a later feature is shown by adding one function.  The whole demo
stays under about 15 s on a 2-core machine, and imports nothing beyond
the stdlib and polyproc.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import polyproc

__all__ = ["Row", "SECTIONS", "add_arguments", "main", "count_primes"]


@dataclass
class Row:
    """One line of the table.  A cell is seconds (float) or a short text."""
    workload: str
    serial: float | str | None
    stdlib: float | str
    polyproc: float | str
    notes: list[str] = field(default_factory=list)


# --- the workloads (module level: the workers import them by name) ---------

def count_primes(bounds: tuple[int, int]) -> int:
    """Number of primes in ``range(lo, hi)``, by trial division (pure Python)."""
    lo, hi = bounds
    count = 0
    for k in range(max(lo, 2), hi):
        if k % 2 == 0:
            count += k == 2
            continue
        d = 3
        while d * d <= k:
            if k % d == 0:
                break
            d += 2
        else:
            count += 1
    return count


def tiny_task(x: int) -> int:
    return x + 1


def task_that_kills_its_worker(i: int, victim: int = 3) -> int:
    """Task *victim* dies the way an OOM-killed worker does: SIGKILL."""
    if i == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    return i * i


# --- the sections -------------------------------------------------------

PRIMES_BELOW = 1_200_000
PRIMES_CHUNKS = 32
TINY_TASKS = 10_000
KILL_TASKS = 8
STDLIB_PATIENCE_S = 2.0
ROUNDS = 2


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def cpu_bound_map(processes: int) -> Row:
    """Count the primes below PRIMES_BELOW: serial, stdlib map, polyproc map."""
    n = PRIMES_BELOW
    chunks = [(i * n // PRIMES_CHUNKS, (i + 1) * n // PRIMES_CHUNKS)
              for i in range(PRIMES_CHUNKS)]
    serial_s, serial = _timed(lambda: sum(map(count_primes, chunks)))
    # Both pools stay up while their maps alternate, best of ROUNDS: the
    # machine's noise then hits both alike.
    with multiprocessing.Pool(processes) as std_pool, \
            polyproc.Pool(processes) as poly_pool:
        std_times, poly_times = [], []
        for _ in range(ROUNDS):
            seconds, stdlib = _timed(lambda: sum(std_pool.map(count_primes, chunks)))
            std_times.append(seconds)
            seconds, poly = _timed(lambda: sum(poly_pool.map(count_primes, chunks)))
            poly_times.append(seconds)
    stdlib_s, poly_s = min(std_times), min(poly_times)
    if not serial == stdlib == poly:
        raise SystemExit(f"demo: the answers differ: serial {serial}, "
                         f"stdlib {stdlib}, polyproc {poly}")
    return Row(f"count primes below {n:,} (map)", serial_s, stdlib_s, poly_s,
               [(f"{serial:,} primes, the same from all three; pool times are "
                 f"the best of {ROUNDS} alternating runs")])


def many_tiny_tasks(processes: int) -> Row:
    """imap_unordered of many tiny tasks, with the default chunksize."""
    items = range(TINY_TASKS)
    expected = sum(tiny_task(x) for x in items)
    with multiprocessing.Pool(processes) as pool:
        stdlib_s, stdlib = _timed(lambda: sum(pool.imap_unordered(tiny_task, items)))
    with polyproc.Pool(processes) as pool:
        poly_s, poly = _timed(lambda: sum(pool.imap_unordered(tiny_task, items)))
    if not expected == stdlib == poly:
        raise SystemExit(f"demo: imap_unordered sums differ: {expected}, "
                         f"stdlib {stdlib}, polyproc {poly}")
    return Row(f"{TINY_TASKS:,} tiny tasks (imap_unordered)", None,
               stdlib_s, poly_s)


def worker_killed_mid_map(processes: int) -> Row:
    """One task SIGKILLs its worker: what each pool does about it."""
    tasks = range(KILL_TASKS)
    with multiprocessing.Pool(processes) as pool:
        start = time.perf_counter()
        try:
            pool.map_async(task_that_kills_its_worker, tasks).get(STDLIB_PATIENCE_S)
            stdlib = "finished (unexpected)"
        except multiprocessing.TimeoutError:
            stdlib = (f"map lost: still waiting after "
                      f"{time.perf_counter() - start:.1f} s")
    with polyproc.Pool(processes) as pool:
        start = time.perf_counter()
        outcomes = pool.imap(task_that_kills_its_worker, tasks)
        lost, ok, other = [], 0, []
        for i in tasks:
            try:
                next(outcomes)
                ok += 1
            except polyproc.WorkerLostError:
                lost.append(i)
            except Exception as error:  # shown, not hidden: it would be a bug
                other.append(f"task {i}: {type(error).__name__}")
        elapsed = time.perf_counter() - start
    poly = (f"imap: WorkerLostError for task {', '.join(map(str, lost))} only, "
            f"{ok} ok, {elapsed:.2f} s" + "".join(f"; {o}" for o in other))
    return Row("a worker SIGKILLed mid-map", None, stdlib, poly,
               ["stdlib: without a timeout, map() blocks forever (gh-66587)"])


SECTIONS: list[Callable[[int], Row]] = [
    cpu_bound_map,
    many_tiny_tasks,
    worker_killed_mid_map,
]


# --- the table ---------------------------------------------------------------

def _seconds(value: float | str | None) -> str:
    return f"{value:.2f} s" if isinstance(value, float) else "-"


def _ratio(num: float | str | None, den: float | str | None) -> str:
    if isinstance(num, float) and isinstance(den, float) and den > 0:
        return f"{num / den:.1f}x"
    return "-"


_HEADER = ("workload", "serial", "stdlib", "polyproc", "polyproc vs stdlib",
           "vs serial: stdlib / polyproc")


def print_table(rows: list[Row], out=sys.stdout) -> None:
    """Rows of times in aligned columns; rows of outcomes (text) below their name."""
    timed = [(r.workload, _seconds(r.serial), _seconds(r.stdlib),
              _seconds(r.polyproc), _ratio(r.stdlib, r.polyproc),
              f"{_ratio(r.serial, r.stdlib)} / {_ratio(r.serial, r.polyproc)}"
              if isinstance(r.serial, float) else "-")
             for r in rows if isinstance(r.stdlib, float)]
    widths = [max(len(line[i]) for line in [_HEADER] + timed)
              for i in range(len(_HEADER))]
    for line in [_HEADER] + timed:
        first, *rest = [c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(line, widths))]
        print("  ".join([first] + rest), file=out)
    for row in rows:
        if not isinstance(row.stdlib, float):
            print(f"{row.workload}:", file=out)
            print(f"    stdlib:   {row.stdlib}", file=out)
            print(f"    polyproc: {row.polyproc}", file=out)
    for row in rows:
        for note in row.notes:
            print(f"note ({row.workload}): {note}", file=out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo takes no options (``python -m polyproc demo --help``)."""


def main(args: argparse.Namespace | None = None) -> int:
    processes = os.cpu_count() or 1
    print(f"polyproc {polyproc.__version__} demo: {processes} worker processes, "
          f"start method {polyproc.get_start_method()!r}, Python "
          f"{sys.version.split()[0]}", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > processes / 2:
        print(f"(load average {load:.1f} on {processes} CPUs: other work is "
              "running, the times will be noisy)", flush=True)
    print(flush=True)
    rows = []
    for section in SECTIONS:
        rows.append(section(processes))
    print_table(rows)
    return 0
