"""Queues: polyproc beside the stdlib and faster-fifo (issue 4's targets).

Each repetition makes a fresh queue and starts its processes (fork) *before*
the clock starts (unless a scenario says otherwise); what is timed is moving
the messages, from the first put until every consumer has reported that it
got its share.

* ``queue_1p1c_64B``: 100,000 messages of 64 bytes, one producer (this
  process) and one consumer process.  Target: >= 3x the stdlib's msgs/s.
* ``queue_1p1c_64B_parent_puts``: the same as a user's program has it:
  the consumer's process start and join inside the timed region, and the
  consumer calling plain ``get()``.
* ``queue_1p1c_64B_child_puts``: the reverse direction: the producer is a
  child process (started, and joined, inside the timed region) and this
  process consumes, blocking in plain ``get()``.  Target >= 3x for both.
* ``queue_4p4c_64B``: the same 100,000 messages from 4 producer processes to
  4 consumer processes (each consumer stops at a sentinel).  Target >= 3x.
* ``queue_batch_64B``: 1p1c again with ``put_many``/``get_many`` batches of
  1,000 (faster-fifo: its ``put_many``/``get_many``); the stdlib has no
  batch call and moves the messages one at a time.
* ``queue_numpy_16MB``: 24 NumPy arrays of 16 MB, 1p1c.  Target >= 5x the
  stdlib's bytes/s.

The consumers of the other scenarios call ``get(timeout=30)`` so that a
broken contender cannot hang the run.  That is not free for the stdlib: a
timeout sends its ``get`` through ``poll()`` and a timed semaphore wait,
about 1.6x its time per message (docs/queues.md, "Performance").  The
``_parent_puts``/``_child_puts`` scenarios use plain ``get()`` for every
contender.
"""
from __future__ import annotations

import multiprocessing
import time

from ._harness import Scenario

N_SMALL = 100_000
MSG = b"x" * 64
BATCH = 1_000
N_ARRAYS = 24
ARRAY_BYTES = 16 * 2**20

_fork = multiprocessing.get_context("fork")


# --- the queues under test ---------------------------------------------------

def _stdlib_queue():
    return _fork.Queue()


def _polyproc_queue():
    import polyproc
    return polyproc.get_context("fork").Queue()


def _ff_queue():
    import faster_fifo
    # Big enough for any backlog in these scenarios (the producer may run
    # ahead of the consumer); faster-fifo's puts time out after 10 s
    # when it is full.
    return faster_fifo.Queue(max_size_bytes=256 * 2**20)


# --- process bodies (module level: fork children run them) -------------------

def _consume(q, n, done, batched):
    got = 0
    if batched:
        if type(q).__module__.startswith("faster_fifo"):
            while got < n:       # faster-fifo
                got += len(q.get_many(max_messages_to_get=BATCH, timeout=30))
        else:
            while got < n:
                got += len(q.get_many(BATCH, timeout=30))
    else:
        get = q.get
        for _ in range(n):
            get(timeout=30)
            got += 1
    done.send(got)


def _get_n(q, n, done):
    get = q.get
    for _ in range(n):
        get()
    done.send(n)


def _consume_until_none(q, done):
    got = 0
    get = q.get
    while get(timeout=30) is not None:
        got += 1
    done.send(got)


def _produce(q, n, start):
    start.wait()
    put = q.put
    for _ in range(n):
        put(MSG)


def _produce_now(q, n):
    put = q.put
    for _ in range(n):
        put(MSG)


# --- contenders ---------------------------------------------------------------

def _one_to_one(make_queue, batched=False, items=None, n=N_SMALL):
    def run() -> float:
        q = make_queue()
        reader, writer = _fork.Pipe(duplex=False)
        consumer = _fork.Process(target=_consume, args=(q, n, writer, batched))
        consumer.start()
        payload = items() if items else None
        start = time.perf_counter()
        if batched:
            chunk = [MSG] * BATCH
            for _ in range(n // BATCH):
                q.put_many(chunk)
        elif payload is not None:
            for obj in payload:
                q.put(obj)
        else:
            put = q.put
            for _ in range(n):
                put(MSG)
        got = reader.recv()
        elapsed = time.perf_counter() - start
        consumer.join()
        if got != n:
            raise RuntimeError(f"consumer got {got} of {n}")
        return elapsed
    return run


def _parent_puts_started(make_queue, n=N_SMALL):
    """1p1c, producer here; the consumer child's start and join are timed."""
    def run() -> float:
        q = make_queue()
        reader, writer = _fork.Pipe(duplex=False)
        consumer = _fork.Process(target=_get_n, args=(q, n, writer))
        start = time.perf_counter()
        consumer.start()
        put = q.put
        for _ in range(n):
            put(MSG)
        got = reader.recv()
        consumer.join()
        elapsed = time.perf_counter() - start
        if got != n:
            raise RuntimeError(f"consumer got {got} of {n}")
        return elapsed
    return run


def _child_puts_started(make_queue, n=N_SMALL):
    """1p1c, producer in a child (start and join timed), this process gets."""
    def run() -> float:
        q = make_queue()
        producer = _fork.Process(target=_produce_now, args=(q, n))
        start = time.perf_counter()
        producer.start()
        get = q.get
        for _ in range(n):
            get()
        producer.join()
        elapsed = time.perf_counter() - start
        if producer.exitcode != 0:
            raise RuntimeError(f"producer exited with {producer.exitcode}")
        return elapsed
    return run


def _many_to_many(make_queue, producers=4, consumers=4, n=N_SMALL):
    def run() -> float:
        q = make_queue()
        start_evt = _fork.Event()
        pipes = [_fork.Pipe(duplex=False) for _ in range(consumers)]
        cons = [_fork.Process(target=_consume_until_none, args=(q, w))
                for _, w in pipes]
        prods = [_fork.Process(target=_produce, args=(q, n // producers, start_evt))
                 for _ in range(producers)]
        for p in cons + prods:
            p.start()
        start = time.perf_counter()
        start_evt.set()
        for p in prods:
            p.join()
        for _ in cons:
            q.put(None)
        got = sum(r.recv() for r, _ in pipes)
        elapsed = time.perf_counter() - start
        for p in cons:
            p.join()
        if got != n:
            raise RuntimeError(f"consumers got {got} of {n}")
        return elapsed
    return run


def _arrays():
    import numpy as np
    return [np.full(ARRAY_BYTES // 8, i, dtype=np.float64) for i in range(N_ARRAYS)]


def _ff_array_queue():
    import faster_fifo
    # A message larger than faster-fifo's buffer never fits: size it for a
    # few arrays.
    return faster_fifo.Queue(max_size_bytes=4 * (ARRAY_BYTES + 2**20))


def scenarios() -> list[Scenario]:
    return [
        Scenario(
            name="queue_1p1c_64B",
            contenders={
                "stdlib": _one_to_one(_stdlib_queue),
                "polyproc": _one_to_one(_polyproc_queue),
                "faster-fifo": _one_to_one(_ff_queue),
            },
            work=(N_SMALL, "msgs"),
            target=">= 3x stdlib msgs/s",
        ),
        Scenario(
            name="queue_1p1c_64B_parent_puts",
            contenders={
                "stdlib": _parent_puts_started(_stdlib_queue),
                "polyproc": _parent_puts_started(_polyproc_queue),
                "faster-fifo": _parent_puts_started(_ff_queue),
            },
            work=(N_SMALL, "msgs"),
            target=">= 3x stdlib msgs/s, consumer start timed",
        ),
        Scenario(
            name="queue_1p1c_64B_child_puts",
            contenders={
                "stdlib": _child_puts_started(_stdlib_queue),
                "polyproc": _child_puts_started(_polyproc_queue),
                "faster-fifo": _child_puts_started(_ff_queue),
            },
            work=(N_SMALL, "msgs"),
            target=">= 3x stdlib msgs/s, producer start timed",
        ),
        Scenario(
            name="queue_batch_64B",
            contenders={
                "stdlib": _one_to_one(_stdlib_queue),
                "polyproc put/get_many": _one_to_one(_polyproc_queue, batched=True),
                "faster-fifo get_many": _one_to_one(_ff_queue, batched=True),
            },
            work=(N_SMALL, "msgs"),
            target="batches beside plain stdlib puts",
        ),
        Scenario(
            name="queue_4p4c_64B",
            contenders={
                "stdlib": _many_to_many(_stdlib_queue),
                "polyproc": _many_to_many(_polyproc_queue),
                "faster-fifo": _many_to_many(_ff_queue),
            },
            work=(N_SMALL, "msgs"),
            target=">= 3x stdlib msgs/s",
        ),
        Scenario(
            name="queue_numpy_16MB",
            contenders={
                "stdlib": _one_to_one(_stdlib_queue, items=_arrays, n=N_ARRAYS),
                "polyproc": _one_to_one(_polyproc_queue, items=_arrays, n=N_ARRAYS),
                "faster-fifo": _one_to_one(_ff_array_queue, items=_arrays, n=N_ARRAYS),
            },
            work=(N_ARRAYS * ARRAY_BYTES, "B"),
            target=">= 5x stdlib bytes/s",
            repeats=3,
        ),
    ]
