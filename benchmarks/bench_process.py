"""Process start+join latency: ``polyproc.Process`` against the stdlib's.

polyproc's Process adds an exception channel (one pipe per process), the
stdin guard and, for daemons, the parent watchdog thread; this measures
what that costs on each start method.  One repetition starts and joins
*n* processes one after the other (non-daemon, then daemon, alternately,
so the watchdog is paid for) running a function that returns at once.
The fork server is started before timing: both libraries share it.

Measured on the 2-core machine: parity under spawn and forkserver (the
interpreter start dominates); under fork, where a start+join takes about
1.3 ms, a non-daemon child costs ~0.15 ms more (the pipe, the stdin guard)
and a daemon child ~0.45 ms more, mostly for creating the watchdog thread
(a bare thread in a forked child costs 0.2-0.3 ms here).
"""
from __future__ import annotations

import multiprocessing
import time

import polyproc

from ._harness import Scenario

# Processes per repetition: enough that one repetition takes ~50-100 ms.
_PER_REPETITION = {"fork": 20, "forkserver": 10, "spawn": 4}


def noop() -> None:
    pass


def _start_join(ctx, n: int):
    def contender() -> float:
        start = time.perf_counter()
        for i in range(n):
            p = ctx.Process(target=noop, daemon=bool(i % 2))
            p.start()
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"child exited with {p.exitcode}")
        return time.perf_counter() - start
    return contender


def scenarios() -> list[Scenario]:
    out = []
    for method, n in _PER_REPETITION.items():
        if method not in multiprocessing.get_all_start_methods():
            continue
        std_ctx = multiprocessing.get_context(method)
        poly_ctx = polyproc.get_context(method)
        if method == "forkserver":
            _start_join(std_ctx, 1)()  # start the shared fork server, untimed
        out.append(Scenario(
            name=f"process start+join ({method})",
            contenders={"stdlib": _start_join(std_ctx, n),
                        "polyproc": _start_join(poly_ctx, n)},
            work=(n, "processes"),
            target="parity with the stdlib (ratio ~1.0)",
            notes=[f"{n} processes per repetition, half of them daemons"],
        ))
    return out
