"""The main job: ``python -m polyproc demo`` (``make demo``).

Runs real work three ways (serially in this process, with the stdlib's
``multiprocessing.Pool`` and with ``polyproc.Pool``), checks that the
answers agree, and prints one table row per section: times and speed-ups,
or what happened when something went wrong.

Each section is a function returning a ``Row``; ``SECTIONS`` lists them in
order, so a later feature is shown by adding one function.

Then polyproc's own view of a run (``observed_run``): the primes map once
more, on a ``Pool(insights=True, timeline=FILE)`` whose worker is SIGKILLed
in the middle of one task (retried with ``retries=1``), and a summary of
its ``insights()``: tasks, workers with their working, waiting and start-up
times and how they ended, the slowest tasks; and where the timeline was
written (``--timeline FILE``, by default in the temporary directory), with
the command that draws it.  A run of its own, not one of the timed maps:
the timed pools must not pay for recording, and a pool that sat idle while
the stdlib's ran would show that idle time as waiting.

The whole demo stays under about 15 s on a 2-core machine, and imports
nothing beyond the stdlib and polyproc (drawing the timeline needs
matplotlib, an optional extra; the demo only writes the file).
"""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

import polyproc

__all__ = ["Row", "SECTIONS", "add_arguments", "main", "count_primes", "observed_run",
           "print_insights"]


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


# Set in each worker of observed_run's pool by its initializer: the file
# whose creation claims the one kill, and the task (its upper bound) to die in.
_kill_once: tuple[str, int] | None = None


def arm_kill_once(claim: str, victim: int) -> None:
    """Pool initializer: ``count_primes_dying_once`` kills one worker, once."""
    global _kill_once
    _kill_once = (claim, victim)


def count_primes_dying_once(bounds: tuple[int, int]) -> int:
    """``count_primes``; but the first worker to run the victim task SIGKILLs
    itself (the OOM killer's way).  Creating the claim file is the atomic
    "once" across processes: the retry, on a replacement worker, counts."""
    if _kill_once is not None and bounds[1] == _kill_once[1]:
        try:
            os.close(os.open(_kill_once[0], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass   # killed already: this is the retry
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return count_primes(bounds)


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
    # The two maps alternate, best of ROUNDS: the machine's noise then hits
    # both alike.  One pool at a time, each closed and joined before the
    # next is made: a pool made while the other's threads run would fork a
    # multi-threaded process (Python 3.12+ warns: the child may deadlock).
    std_times, poly_times = [], []
    for _ in range(ROUNDS):
        with multiprocessing.Pool(processes) as std_pool:
            seconds, stdlib = _timed(lambda: sum(std_pool.map(count_primes, chunks)))
        std_times.append(seconds)
        with polyproc.Pool(processes) as poly_pool:
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
    # The stdlib's pool forks the killed worker's replacement from its
    # worker-handler thread: under fork, a fork of a multi-threaded process
    # (Python 3.12+ warns: the child may deadlock).  Its forkserver (the
    # default from Python 3.14) loses the map the same way.
    std_ctx = multiprocessing.get_context(
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None)
    with std_ctx.Pool(processes) as pool:
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


# --- polyproc's own view of a run -------------------------------------------

# A file in the temporary directory, the same each run: the demo leaves
# nothing in the working directory (``make demo`` runs in a checkout).
DEFAULT_TIMELINE = os.path.join(tempfile.gettempdir(), "polyproc-demo-timeline.json")
SLOWEST_SHOWN = 3


def observed_run(processes: int, timeline: str) -> tuple[int, dict[str, Any]]:
    """The primes map on a ``Pool(insights=True, timeline=timeline)``, one
    worker SIGKILLed in the middle of a task and that task retried; returns
    the number of primes and ``pool.insights()``.  The file is written when
    the pool is done."""
    n = PRIMES_BELOW
    chunks = [(i * n // PRIMES_CHUNKS, (i + 1) * n // PRIMES_CHUNKS)
              for i in range(PRIMES_CHUNKS)]
    victim = chunks[len(chunks) // 3][1]   # a task in the middle of the run
    with tempfile.TemporaryDirectory(prefix="polyproc-demo-") as scratch, \
            polyproc.Pool(processes, initializer=arm_kill_once,
                          initargs=(os.path.join(scratch, "killed"), victim),
                          insights=True, timeline=timeline) as pool:
        total = sum(pool.map(count_primes_dying_once, chunks, chunksize=1, retries=1))
        insights = pool.insights()
    return total, insights


def print_insights(primes: int, insights: dict[str, Any], timeline: str,
                   out: TextIO = sys.stdout) -> None:
    """A short summary of ``insights()``, and where the timeline is."""
    totals = insights["totals"]
    print(f"{primes:,} primes; tasks: {totals['tasks_completed']} completed, "
          f"{totals['tasks_failed']} failed, {totals['retries']} retried; workers: "
          f"{totals['workers_started']} started, {totals['workers_lost']} lost; "
          f"wall time {totals['wall_time']:.2f} s", file=out)
    header = ("worker", "pid", "tasks", "working", "waiting", "start-up", "ended")
    lines = [header] + [
        (str(w["slot"]), str(w["pid"]), str(w["tasks_completed"]),
         f"{w['working_time']:.2f} s", f"{w['waiting_time']:.2f} s",
         f"{w['start_up_time']:.3f} s" if w["start_up_time"] is not None else "-",
         _how_it_ended(w))
        for w in insights["workers"]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  " + "  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths))).rstrip(),
              file=out)
    print("slowest tasks:", file=out)
    for task in insights["slowest_tasks"][:SLOWEST_SHOWN]:
        print(f"  {task['duration']:.2f} s  {task['task']}", file=out)
    print(f"timeline: {timeline}", file=out)
    hint = f"draw it: python -m polyproc plot {timeline} -o timeline.png"
    if importlib.util.find_spec("matplotlib") is None:
        hint += " (needs matplotlib: pip install 'polyproc[plot]')"
    print(f"  {hint}; or open it in https://ui.perfetto.dev", file=out)


def _how_it_ended(worker: dict[str, Any]) -> str:
    if worker["status"] != "lost":
        return str(worker["status"])
    cause = worker["signal"] or f"exit code {worker['exitcode']}"
    return f"lost ({cause})"


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
    """``--timeline FILE``: where the observed run's timeline goes."""
    parser.add_argument("--timeline", metavar="FILE", default=DEFAULT_TIMELINE,
                        help="write the timeline of polyproc's observed run to FILE "
                             f"(default: {DEFAULT_TIMELINE})")


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
    timeline = os.path.abspath(args.timeline if args is not None else DEFAULT_TIMELINE)
    print("\npolyproc's own view of the primes map, run once more with "
          "Pool(insights=True, timeline=...), a worker SIGKILLed mid-task and "
          "retries=1:", flush=True)
    print_insights(*observed_run(processes, timeline), timeline)
    return 0
