"""A soak of the Pool and the Executor while their workers are SIGKILLed at random.

A ``Killer`` thread sends SIGKILL to a random live worker of the pool under
test every few milliseconds (workers that are still starting included),
while the main thread runs rounds of ``Pool.imap_unordered``, ``Pool.map``
and ``Executor`` futures with ``retries``, each task taking and returning a
2 MiB NumPy array (so both directions go through shared memory).  It
checks that every input yields exactly one outcome, either its correct
result or a ``WorkerLostError`` naming that very input (its retries were
used up), that nothing waits past a bound, and that the pools leave nothing
behind: shared-memory segments of this session, file descriptors, threads,
processes.

Two entry points run the same code:

* ``tests/test_soak.py``: a bounded budget (``POLYPROC_SOAK_SECONDS``,
  default 20 s), part of ``make test``;
* ``make soak``, i.e. ``python tests/_soak.py --seconds 600``: longer, on
  every start method, printing the figures.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import gc
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import psutil

import polyproc
from polyproc import WorkerLostError
from polyproc._transport import shm as _shm
from polyproc._transport import shm_cache as _shm_pool

ARRAY_BYTES = 2 * 1024 * 1024
ROUND_TASKS = 48           # tasks per call: 2 x 96 MiB of arrays in flight at most
RESULT_WAIT_SECONDS = 60   # past this without an outcome, a call counts as hung
LEAK_WAIT_SECONDS = 10     # the shared-memory tracker sweeps dead senders every second
API_NAMES = ("imap_unordered", "map", "executor")

# Seconds between kills, per start method: a spawned worker, or one forked
# by the fork server (which does not preload this module on Python 3.11),
# imports NumPy and takes a few hundred milliseconds to start here: killed
# every few milliseconds, none would ever start.
KILL_INTERVALS = {"fork": (0.005, 0.030), "forkserver": (0.100, 0.400),
                  "spawn": (0.100, 0.400)}


# -- the task (importable by spawned workers) ---------------------------------

def make_input(i: int) -> tuple[int, np.ndarray]:
    return i, np.full(ARRAY_BYTES // 8, float(i))


def transform(item: tuple[int, np.ndarray]) -> tuple[int, np.ndarray]:
    """Returns (i, array + 1); a few tasks in four sleep a millisecond or two,
    so that kills also land while a task runs."""
    i, array = item
    time.sleep((i % 4) * 0.0007)
    return i, array + 1.0


def result_is_correct(i: int, value) -> bool:
    j, array = value
    return (j == i and array.shape == (ARRAY_BYTES // 8,)
            and bool((array == i + 1.0).all()))


_TASK_INDEX = re.compile(r"transform\(\(?(\d+), array")


def input_named_by(exc: BaseException) -> int | None:
    """The input a WorkerLostError names (its ``task`` shows the item's repr)."""
    match = _TASK_INDEX.search(getattr(exc, "task", None) or "")
    return int(match.group(1)) if match else None


# -- the killer -----------------------------------------------------------------

class Killer(threading.Thread):
    """SIGKILLs a random worker of ``worker_pids()`` every *interval* seconds.

    Only processes that are descendants of this one are ever signalled, and
    through psutil, which checks that a pid was not reused by another
    process since it was seen: the machine is shared.
    """

    def __init__(self, worker_pids: Callable[[], list[int]],
                 interval: tuple[float, float], seed: int):
        super().__init__(name="SoakKiller", daemon=True)
        self.worker_pids = worker_pids
        self.interval = interval
        self.rng = random.Random(seed)
        self.stopped = threading.Event()
        self.kills = 0
        self._known: dict[int, psutil.Process] = {}

    def run(self) -> None:
        while not self.stopped.wait(self.rng.uniform(*self.interval)):
            pids = self.worker_pids()
            if pids:
                self._kill(self.rng.choice(pids))

    def _kill(self, pid: int) -> None:
        process = self._known.get(pid)
        if process is None:
            self._known = {p.pid: p for p in psutil.Process().children(recursive=True)}
            process = self._known.get(pid)
        if process is None:
            return  # gone already, or not ours
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.Error:
            return
        self.kills += 1

    def stop(self) -> int:
        self.stopped.set()
        self.join()
        return self.kills


# -- what a soak leaves behind ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Snapshot:
    segments: frozenset
    fds: frozenset
    threads: frozenset
    processes: frozenset

    @classmethod
    def take(cls) -> Snapshot:
        prefix = _shm.session_prefix()
        return cls(frozenset(f for f in os.listdir("/dev/shm") if f.startswith(prefix)),
                   frozenset(os.listdir("/proc/self/fd")),
                   frozenset(t.ident for t in threading.enumerate()),
                   frozenset(p.pid for p in psutil.Process().children(recursive=True)))

    def leaked_since(self, before: Snapshot) -> dict[str, int]:
        return {field.name: len(getattr(self, field.name) - getattr(before, field.name))
                for field in dataclasses.fields(self)}


def wait_for_leftovers(before: Snapshot, seconds: float) -> dict[str, int]:
    """What is still left over since *before*, after waiting up to *seconds*.

    Clean-up that has no event to wait on (received arrays freed by the
    garbage collector, the tracker's sweep of dead senders' segments, the
    reaping of workers) is polled, within the bound.
    """
    deadline = time.monotonic() + seconds
    while True:
        gc.collect()
        _shm_pool.trim()
        leaked = Snapshot.take().leaked_since(before)
        if not any(leaked.values()) or time.monotonic() > deadline:
            return leaked
        time.sleep(0.1)


# -- the soak -------------------------------------------------------------------

@dataclasses.dataclass
class SoakReport:
    method: str
    seconds: float = 0.0
    tasks: int = 0             # inputs submitted
    kills: int = 0             # SIGKILLs that reached a worker
    results: int = 0           # correct results
    worker_lost: int = 0       # WorkerLostError naming its own input: retries used up
    failed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    #                            other errors, by type (a broken pool's ProcessError...)
    unverified: int = 0        # other inputs of a map call that raised (map shows one error)
    lost: int = 0              # inputs with no outcome at all
    duplicated: int = 0        # outcomes beyond the first for an input
    wrong: int = 0             # results with a wrong value
    hung: int = 0              # calls without an outcome within RESULT_WAIT_SECONDS
    leaked: dict = dataclasses.field(default_factory=dict)
    details: list = dataclasses.field(default_factory=list)  # what went wrong, by input

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.wrong or self.failed
                    or self.hung or any(self.leaked.values()))

    def line(self) -> str:
        return (f"{self.method}: {self.seconds:.0f} s, {self.tasks} tasks, {self.kills} kills, "
                f"{self.results} results, {self.worker_lost} WorkerLostError (own input), "
                f"other errors {dict(self.failed)}, {self.unverified} unverified, "
                f"lost {self.lost}, duplicated {self.duplicated}, wrong {self.wrong}, "
                f"hung {self.hung}, leaked {self.leaked}")


class _Outcomes:
    """Outcomes of one call, by input, checked as they arrive."""

    def __init__(self, report: SoakReport, inputs: range, api: str):
        self.report = report
        self.api = api
        self.seen: dict[int, int] = dict.fromkeys(inputs, 0)
        self.unattributed = 0
        self.pool_broke = False
        report.tasks += len(inputs)

    def value(self, i: int, value) -> None:
        self._count(i)
        if result_is_correct(i, value):
            self.report.results += 1
        else:
            self.report.wrong += 1
            self._note(f"input {i}: wrong result")

    def error(self, exc: BaseException, i: int | None = None) -> None:
        """An error for input *i* (None: the API does not say which input)."""
        named = input_named_by(exc) if isinstance(exc, WorkerLostError) else None
        if named is not None and named in self.seen and i in (None, named):
            self._count(named)
            self.report.worker_lost += 1
            return
        self.report.failed[type(exc).__name__] += 1
        self.pool_broke |= isinstance(exc, polyproc.ProcessError)
        self._note(f"input {i}: {type(exc).__name__}: {exc}")
        if i is None:
            self.unattributed += 1
        else:
            self._count(i)

    def _count(self, i: int) -> None:
        self.seen[i] += 1
        if self.seen[i] > 1:
            self.report.duplicated += 1
            self._note(f"input {i}: outcome number {self.seen[i]}")

    def _note(self, text: str) -> None:
        self.report.details.append(f"{self.api} {text}")

    def finish(self, unverified: int = 0) -> bool:
        """The call is over; *unverified*: inputs whose outcome it did not show.

        Returns False if the pool broke (an error of the pool, not of a task).
        """
        self.report.unverified += unverified
        if unverified:
            return not self.pool_broke
        missing = [i for i, n in self.seen.items() if n == 0]
        # An error that names no input stands for one of the missing ones.
        self.report.lost += max(0, len(missing) - self.unattributed)
        if len(missing) > self.unattributed:
            self.report.details += [f"{self.api} input {i}: no outcome" for i in missing]
        return not self.pool_broke


def _run_imap_unordered(pool, inputs: range, retries: int, report: SoakReport) -> bool:
    outcomes = _Outcomes(report, inputs, "imap_unordered")
    it = pool.imap_unordered(transform, (make_input(i) for i in inputs), retries=retries)
    while True:
        try:
            i, array = it.next(timeout=RESULT_WAIT_SECONDS)
        except StopIteration:
            break
        except polyproc.TimeoutError:
            report.hung += 1
            break
        except Exception as exc:
            outcomes.error(exc)
        else:
            outcomes.value(i, (i, array))
    return outcomes.finish()


def _run_map(pool, inputs: range, retries: int, report: SoakReport) -> bool:
    outcomes = _Outcomes(report, inputs, "map")
    result = pool.map_async(transform, [make_input(i) for i in inputs], retries=retries)
    try:
        values = result.get(RESULT_WAIT_SECONDS)
    except polyproc.TimeoutError:
        report.hung += 1
        return outcomes.finish()
    except Exception as exc:
        # map raises one task's error; the other inputs' outcomes are not shown.
        outcomes.error(exc)
        return outcomes.finish(unverified=len(inputs) - 1)
    for i, value in zip(inputs, values):
        outcomes.value(i, value)
    return outcomes.finish()


def _run_executor(executor, inputs: range, retries: int, report: SoakReport) -> bool:
    outcomes = _Outcomes(report, inputs, "executor")
    with_retries = executor.options(retries=retries)
    futures = [(i, with_retries.submit(transform, make_input(i))) for i in inputs]
    deadline = time.monotonic() + RESULT_WAIT_SECONDS
    for i, future in futures:
        try:
            value = future.result(max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            report.hung += 1
            return outcomes.finish()
        except Exception as exc:
            outcomes.error(exc, i)
        else:
            outcomes.value(i, value)
    return outcomes.finish()


_RUNS = {"imap_unordered": _run_imap_unordered, "map": _run_map,
         "executor": _run_executor}


def _soak_one_api(ctx, api: str, seconds: float, processes: int, retries: int,
                  report: SoakReport, first_input: int, seed: int) -> int:
    """Rounds of *api* on one pool for *seconds*, under the killer; returns inputs used.

    A call that raises (the pool broke) fails its round's inputs with that
    error; a pool that broke ends this API's rounds.
    """
    pool = ctx.Executor(processes) if api == "executor" else ctx.Pool(processes)

    def pids() -> list[int]:
        """The pids of the pool's workers, those still starting included."""
        if api == "executor":
            return list(pool._processes)
        return [p.pid for p in pool._pool]

    killer = Killer(pids, KILL_INTERVALS[ctx.get_start_method()], seed)
    killer.start()
    start = first_input
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not report.hung:
            inputs = range(start, start + ROUND_TASKS)
            start += ROUND_TASKS
            try:
                if not _RUNS[api](pool, inputs, retries, report):
                    break  # the pool broke: the next rounds would only repeat it
            except Exception as exc:
                report.tasks += len(inputs)
                report.failed[type(exc).__name__] += len(inputs)
                report.details.append(f"{api} call raised {type(exc).__name__}: {exc}")
                break
    finally:
        report.kills += killer.stop()
        if api == "executor":
            pool.shutdown(wait=True)
        else:
            pool.close()
            pool.join()
    return start - first_input


def _warm_up(ctx) -> None:
    """Start what lives for the session (the shared-memory tracker, a fork
    server) before the first snapshot, so that it does not count as leaked."""
    with ctx.Pool(1) as pool:
        assert result_is_correct(0, pool.apply(transform, (make_input(0),)))


def run_soak(seconds: float, method: str | None = None, processes: int = 3,
             retries: int = 3, seed: int = 0) -> SoakReport:
    """Soak each API in turn for a third of *seconds*; return the figures."""
    ctx = polyproc.get_context(method)
    report = SoakReport(ctx.get_start_method())
    _warm_up(ctx)
    gc.collect()
    before = Snapshot.take()
    started = time.monotonic()
    first_input = 0
    for n, api in enumerate(API_NAMES):
        first_input += _soak_one_api(ctx, api, seconds / len(API_NAMES), processes,
                                     retries, report, first_input, seed + n)
    report.seconds = time.monotonic() - started
    report.leaked = wait_for_leftovers(before, LEAK_WAIT_SECONDS)
    if report.leaked["segments"]:
        report.details.append(_segments_by_sender(before))
    return report


def _segments_by_sender(before: Snapshot) -> str:
    """Who created the segments left over (names carry the sender's pid, see _shm.py)."""
    prefix = _shm.session_prefix()
    senders = collections.Counter()
    for name in Snapshot.take().segments - before.segments:
        pid = int(name[len(prefix):].split("_", 1)[0], 16)
        senders["this process" if pid == os.getpid() else
                "live process" if psutil.pid_exists(pid) else "dead process"] += 1
    return f"segments left over, by sender: {dict(senders)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600,
                        help="total budget, shared by the start methods")
    parser.add_argument("--method", action="append", choices=sorted(KILL_INTERVALS),
                        help="start method (repeatable; default: all available)")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--retries", type=int, default=3)
    args = parser.parse_args(argv)
    methods = args.method or [m for m in ("fork", "forkserver", "spawn")
                              if m in polyproc.get_all_start_methods()]
    clean = True
    for n, method in enumerate(methods):
        report = run_soak(args.seconds / len(methods), method, args.processes,
                          args.retries, seed=100 * n)
        print(report.line(), flush=True)
        for line in report.details[:20]:
            print("   ", line)
        clean &= report.clean
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
