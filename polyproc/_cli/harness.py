"""The benchmark harness: the same scenario, several contenders, one run.

Rules every scenario follows (README "Fast"):

* The stdlib and polyproc (and peers where they have the call) run the same
  work *in the same run*, interleaved repetition by repetition, so that
  machine noise hits all of them alike.
* What is reported is the median of the repetitions and the *ratio* to the
  baseline (the stdlib unless the scenario says otherwise), never an
  absolute time alone.
* A contender is a callable that runs one repetition and returns the
  seconds that the measured part took (setup such as starting a pool may
  happen outside the timed part when the scenario says so).

Two sets of scenarios use it: the full one of a source checkout
(``benchmarks/bench_<area>.py``, each with a function ``scenarios() ->
list[Scenario]``; ``make bench``, ``python -m benchmarks --only pool``), and
the set shipped in the package, polyproc against the stdlib only
(``polyproc/_cli/bench.py``, ``python -m polyproc bench [--quick]``).  The
harness lives here, in the package, so that the installed command has it;
``benchmarks/_harness.py`` re-exports it.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

Contender = Callable[[], float]


@dataclass
class Scenario:
    name: str
    contenders: dict[str, Contender]
    baseline: str = "stdlib"
    # What one repetition moves, to print a rate beside the time: e.g.
    # (20_000, "tasks") or (64 * 2**20, "B").
    work: tuple[float, str] | None = None
    target: str = ""            # the target, e.g. ">= 10x stdlib"
    repeats: int | None = None  # overrides the command line's --repeat
    notes: list[str] = field(default_factory=list)


@dataclass
class Result:
    scenario: Scenario
    medians: dict[str, float]
    errors: dict[str, str]

    def ratio(self, name: str) -> float | None:
        base = self.medians.get(self.scenario.baseline)
        mine = self.medians.get(name)
        if base is None or mine is None or mine <= 0:
            return None
        return base / mine


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of *fn* takes (a helper for simple contenders)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_scenario(scenario: Scenario, repeats: int) -> Result:
    """Run every contender *repeats* times (or ``scenario.repeats``),
    interleaved; a contender that raises is reported, not fatal."""
    samples: dict[str, list[float]] = {name: [] for name in scenario.contenders}
    errors: dict[str, str] = {}
    n = scenario.repeats or repeats
    for _ in range(n):
        for name, contender in scenario.contenders.items():
            if name in errors:
                continue
            try:
                samples[name].append(contender())
            except Exception as exc:  # a peer that fails is reported, not fatal
                errors[name] = f"{type(exc).__name__}: {exc}"
    medians = {k: statistics.median(v) for k, v in samples.items() if v}
    return Result(scenario, medians, errors)


def _rate(seconds: float, work: tuple[float, str] | None) -> str:
    if not work or seconds <= 0:
        return ""
    amount, unit = work
    per_s = amount / seconds
    if unit == "B":
        return f"{per_s / 1e9:8.3f} GB/s"
    return f"{per_s:12,.0f} {unit}/s"


def report(result: Result, out=sys.stdout) -> None:
    sc = result.scenario
    print(f"\n== {sc.name}" + (f"   (target: {sc.target})" if sc.target else ""), file=out)
    for name in sc.contenders:
        if name in result.errors:
            print(f"  {name:<22} failed: {result.errors[name]}", file=out)
            continue
        med = result.medians[name]
        ratio = result.ratio(name)
        ratio_s = f"{ratio:6.2f}x {sc.baseline}" if ratio is not None else ""
        print(f"  {name:<22} {med * 1e3:10.2f} ms  {_rate(med, sc.work):>18}  {ratio_s}",
              file=out)
    for note in sc.notes:
        print(f"  note: {note}", file=out)
