"""Managers: ``polyproc.Manager()`` against ``multiprocessing.Manager()``.

Three scenarios from issue 5, each with both libraries in the same run:

* ``managers dict``: 5,000 ``d[i] = i`` then 5,000 ``d[i]`` from one
  client (the managers are started once, outside the timed part);
* ``managers queue round trip``: 2,000 items sent to an echo process
  through one managed queue and back through another (the stdlib: 4 proxy
  calls per round trip, two of them blocking in the server);
* ``managers start+shutdown``: ``Manager()`` then ``shutdown()``, with the
  default start method and with spawn;
* ``managers dict 32 MB NumPy array``: ``d["array"] = a`` then
  ``d["array"]``: the zero-copy path of ``_transport.serialization`` at work;
* ``managers create+use+drop``: ``m.list()``, one call, release: the
  stdlib opens three connections per proxy (create, incref, decref), polyproc
  none.

Both managers run with the default start method (fork on Linux).  What
bounds the stdlib in the first two is the round trip between client and
server (two wake-ups per call, four or six per queue round trip); polyproc's
calls go through shared memory with brief spinning on one machine, and its
managed queues need no server call at all.  See docs/managers.md.
"""
from __future__ import annotations

import atexit
import multiprocessing
import time

import polyproc

from ._harness import Scenario

N_DICT = 5_000
N_ROUND_TRIPS = 2_000
N_CREATE = 500
ARRAY_BYTES = 32 * 2**20
ARRAY_ROUNDS = 4


def echo(inq, outq) -> None:
    while True:
        item = inq.get()
        if item is None:
            return
        outq.put(item)


class _Lazy:
    """One manager (and echo process) per library, started on first use."""

    def __init__(self, lib):
        self.lib = lib
        self.manager = None

    def get(self):
        if self.manager is None:
            self.manager = self.lib.Manager()
            self.dict = self.manager.dict()
            self.inq, self.outq = self.manager.Queue(), self.manager.Queue()
            self.echo = self.lib.Process(target=echo, args=(self.inq, self.outq),
                                         daemon=True)
            self.echo.start()
            atexit.register(self.close)   # before the manager's own finalizer
        return self

    def close(self) -> None:
        self.inq.put(None)
        self.echo.join(5)


def _dict_contender(lazy: _Lazy):
    def run() -> float:
        d = lazy.get().dict
        start = time.perf_counter()
        for i in range(N_DICT):
            d[i] = i
        for i in range(N_DICT):
            d[i]
        return time.perf_counter() - start
    return run


def _queue_contender(lazy: _Lazy):
    def run() -> float:
        state = lazy.get()
        inq, outq = state.inq, state.outq
        start = time.perf_counter()
        for i in range(N_ROUND_TRIPS):
            inq.put(i)
            if outq.get() != i:
                raise RuntimeError("echo out of order")
        return time.perf_counter() - start
    return run


def _create_contender(lazy: _Lazy):
    def run() -> float:
        m = lazy.get().manager
        start = time.perf_counter()
        for i in range(N_CREATE):
            lst = m.list([i])
            lst.append(i)
            del lst
        return time.perf_counter() - start
    return run


def _array_contender(lazy: _Lazy):
    def run() -> float:
        import numpy as np
        state = lazy.get()
        array = np.arange(ARRAY_BYTES // 8, dtype=np.float64)
        d = state.dict
        start = time.perf_counter()
        for _ in range(ARRAY_ROUNDS):
            d["array"] = array
            back = d["array"]
        elapsed = time.perf_counter() - start
        if back.shape != array.shape or back[-1] != array[-1]:
            raise RuntimeError("array came back wrong")
        del d["array"]
        return elapsed
    return run


def _start_shutdown(lib):
    def run() -> float:
        start = time.perf_counter()
        m = lib.Manager()
        m.shutdown()
        return time.perf_counter() - start
    return run


def scenarios() -> list[Scenario]:
    std, poly = _Lazy(multiprocessing), _Lazy(polyproc)
    return [
        Scenario(name="managers dict 5k sets + 5k gets",
                 contenders={"stdlib": _dict_contender(std),
                             "polyproc": _dict_contender(poly)},
                 work=(2 * N_DICT, "ops"), target=">= 3x stdlib (issue 5)"),
        Scenario(name="managers queue round trip",
                 contenders={"stdlib": _queue_contender(std),
                             "polyproc": _queue_contender(poly)},
                 work=(N_ROUND_TRIPS, "round trips"),
                 target=">= 3x stdlib (issue 5)"),
        Scenario(name="managers dict 32 MB NumPy array set+get",
                 contenders={"stdlib": _array_contender(std),
                             "polyproc": _array_contender(poly)},
                 work=(2 * ARRAY_ROUNDS * ARRAY_BYTES, "B"),
                 target="(not in the issue) large values",
                 notes=["polyproc: the zero-copy path of _transport/serialization.py "
                        "(shared memory) between processes of one machine"]),
        Scenario(name="managers create+use+drop 500 proxies",
                 contenders={"stdlib": _create_contender(std),
                             "polyproc": _create_contender(poly)},
                 work=(N_CREATE, "proxies"),
                 target="(not in the issue) proxy creation"),
        Scenario(name="managers start+shutdown",
                 contenders={"stdlib": _start_shutdown(multiprocessing),
                             "polyproc": _start_shutdown(polyproc)},
                 target="no slower than the stdlib"),
        Scenario(name="managers start+shutdown (spawn)",
                 contenders={
                     "stdlib": _start_shutdown(multiprocessing.get_context("spawn")),
                     "polyproc": _start_shutdown(polyproc.get_context("spawn"))},
                 target="no slower than the stdlib",
                 notes=["the server process imports the polyproc package and "
                        "the managers' modules on top of the stdlib's "
                        "multiprocessing.managers (docs/managers.md)"]),
    ]
