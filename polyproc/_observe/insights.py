"""``pool.insights()``: where a pool's time and bytes went, as a plain dict.

``Insights`` is an instrument (``_pool/instruments.py``) that a Pool,
ThreadPool or Executor made with ``insights=True`` attaches.  Not by
default: the events it needs cost about 5 microseconds per chunk on the
development machine, most of it the instrument hook itself (building and
dispatching three events per chunk), which made 10,000 ``apply_async``
calls about 1.4x slower (docs/observe.md has the figures).  It
folds the events into counters as they arrive, so what it keeps does not
grow with the number of tasks: totals, one record per worker process that
has lived (capped at ``MAX_WORKERS``, the oldest ended ones dropped first),
and the ``SLOWEST`` slowest chunks.

Chunks, not tasks.  Workers time chunks (a clock read per task would double
the cost of microsecond tasks, see instruments.py), so the slowest *tasks*
are the slowest chunks, each shown as its first task (``"f(3) [task 3]"``,
with short argument reprs) and its ``tasks`` count: with ``chunksize=1``
(``apply_async``, ``Executor.submit``) that is exactly the task.  The repr is
made only for a chunk that enters the list, not for every chunk.

Its own work is one lock and a few additions per event, in the scheduler
thread.  ``snapshot()`` may be called from any
thread; it copies under the same lock.
"""
from __future__ import annotations

import heapq
import itertools
import platform
import threading
import time
from typing import Any

from .._pool.instruments import (ChunkFailed, ChunkFinished, ChunkQueued, Instrument,
                                 ResultsReceived, TaskRetried, TaskTimedOut,
                                 WorkerExited, WorkerStarted)

__all__ = ["Insights", "SLOWEST", "MAX_WORKERS"]

SLOWEST = 10        # slowest chunks kept
MAX_WORKERS = 4096  # worker records kept (a pool with maxtasksperchild=1 makes many)


class _Worker:
    """What is known of one worker process."""

    __slots__ = ("pid", "slot", "spawned", "ready", "ended", "status", "exitcode",
                 "signal", "tasks_completed", "tasks_failed", "chunks", "working_time")

    def __init__(self, pid: int, slot: int | None, spawned: float, ready: float | None):
        self.pid = pid
        self.slot = slot
        self.spawned = spawned
        self.ready = ready
        self.ended: float | None = None
        self.status = "running"
        self.exitcode: int | None = None
        self.signal: str | None = None
        self.tasks_completed = 0
        self.tasks_failed = 0
        self.chunks = 0
        self.working_time = 0.0

    def as_dict(self, host: str, now: float) -> dict[str, Any]:
        end = self.ended if self.ended is not None else now
        # Alive and ready for work, minus working: waiting for work (or for
        # its results to be sent).  A ThreadPool's single entry sums the
        # working time of all its threads, hence the floor.
        alive = 0.0 if self.ready is None else max(0.0, end - self.ready)
        return {
            "pid": self.pid,
            "host": host,
            "slot": self.slot,
            "status": self.status,
            "exitcode": self.exitcode,
            "signal": self.signal,
            "tasks_completed": self.tasks_completed,
            "tasks_failed": self.tasks_failed,
            "chunks": self.chunks,
            "working_time": self.working_time,
            "waiting_time": max(0.0, alive - self.working_time),
            "start_up_time": 0.0 if self.ready is None else max(0.0, self.ready - self.spawned),
        }


class Insights(Instrument):
    """Counts what a pool did, for ``Pool.insights()`` (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._host = platform.node()
        self._created = time.monotonic()
        self._ended: float | None = None   # when the last worker exited after close
        self._workers: dict[int, _Worker] = {}
        self._workers_dropped = 0
        self._slowest: list[tuple[float, int, dict[str, Any]]] = []  # a min-heap
        self._order = itertools.count()   # ties in the heap: never compare dicts
        self._totals = dict.fromkeys(
            ("tasks_completed", "tasks_failed", "retries", "timeouts", "workers_lost",
             "workers_started", "chunks_completed", "bytes_in_band",
             "bytes_shared_memory"), 0)
        self._seconds = dict.fromkeys(
            ("arguments_unpickling", "results_pickling", "results_unpickling"), 0.0)

    # -- events -----------------------------------------------------------
    def chunk_queued(self, info: ChunkQueued) -> None:
        with self._lock:
            totals = self._totals
            totals["bytes_in_band"] += info.payload_bytes
            totals["bytes_shared_memory"] += info.shared_bytes

    def results_received(self, info: ResultsReceived) -> None:
        with self._lock:
            totals = self._totals
            totals["bytes_in_band"] += info.nbytes
            totals["bytes_shared_memory"] += info.shared_bytes
            self._seconds["results_pickling"] += info.dump_seconds
            self._seconds["results_unpickling"] += info.load_seconds

    def chunk_finished(self, info: ChunkFinished) -> None:
        with self._lock:
            totals = self._totals
            completed = info.tasks - info.failed
            totals["tasks_completed"] += completed
            totals["tasks_failed"] += info.failed
            totals["chunks_completed"] += 1
            self._seconds["arguments_unpickling"] += info.load_seconds
            worker = self._workers.get(info.pid)
            if worker is None:  # a ThreadPool (no worker_started), or a late event
                worker = self._add_worker(_Worker(info.pid, None, self._created,
                                                  self._created))
            worker.tasks_completed += completed
            worker.tasks_failed += info.failed
            worker.chunks += 1
            worker.working_time += info.load_seconds + info.run_seconds
            slowest = self._slowest
            if len(slowest) < SLOWEST or info.run_seconds > slowest[0][0]:
                self._keep_slow(info)

    def chunk_failed(self, info: ChunkFailed) -> None:
        with self._lock:
            self._totals["tasks_failed"] += info.tasks

    def task_retried(self, info: TaskRetried) -> None:
        with self._lock:
            self._totals["retries"] += 1

    def task_timed_out(self, info: TaskTimedOut) -> None:
        with self._lock:
            self._totals["timeouts"] += 1

    def worker_started(self, info: WorkerStarted) -> None:
        with self._lock:
            self._totals["workers_started"] += 1
            self._ended = None
            worker = self._workers.get(info.pid)
            if worker is None:
                self._add_worker(_Worker(info.pid, info.slot, info.spawned, info.ready))
            else:
                worker.slot, worker.spawned, worker.ready = info.slot, info.spawned, info.ready

    def worker_exited(self, info: WorkerExited) -> None:
        with self._lock:
            worker = self._workers.get(info.pid)
            if worker is None:  # died before it was ready
                worker = self._add_worker(_Worker(info.pid, info.slot, info.time, None))
            worker.ended = info.time
            worker.status = info.reason
            worker.exitcode = info.exitcode
            worker.signal = info.signal
            if info.reason == "lost":
                self._totals["workers_lost"] += 1
            if info.reason in ("shut down", "terminated") and \
                    all(w.ended is not None for w in self._workers.values()):
                self._ended = info.time

    def pool_stopped(self, reason: str) -> None:
        """The pool is done (*reason*: ``"shut down"`` or ``"terminated"``): stop its clock.

        A process pool's clock stopped already, at its last worker's exit.
        A ThreadPool fires no worker events: its one entry (its own process,
        without a slot) ends here, else it would stay "running" for ever.
        """
        with self._lock:
            now = time.monotonic()
            for worker in self._workers.values():
                if worker.slot is None and worker.ended is None:
                    worker.ended, worker.status = now, reason
            if self._ended is None and \
                    all(w.ended is not None for w in self._workers.values()):
                self._ended = now

    # -- helpers (called with the lock held) -------------------------------
    def _add_worker(self, worker: _Worker) -> _Worker:
        workers = self._workers
        if len(workers) >= MAX_WORKERS:
            oldest_ended = next((pid for pid, w in workers.items() if w.ended is not None),
                                None)
            if oldest_ended is not None:
                del workers[oldest_ended]
                self._workers_dropped += 1
        workers[worker.pid] = worker
        return worker

    def _keep_slow(self, info: ChunkFinished) -> None:
        task = info.describe(0) if info.describe is not None and info.tasks else ""
        entry = {"duration": info.run_seconds, "task": task, "tasks": info.tasks,
                 "pid": info.pid, "chunk_id": info.chunk_id}
        item = (info.run_seconds, next(self._order), entry)
        if len(self._slowest) < SLOWEST:
            heapq.heappush(self._slowest, item)
        else:
            heapq.heapreplace(self._slowest, item)

    # -- the report ---------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The insights as a JSON-serialisable dict (see docs/observe.md)."""
        with self._lock:
            now = time.monotonic()
            end = self._ended if self._ended is not None else now
            totals: dict[str, Any] = dict(self._totals)
            seconds = dict(self._seconds)
            workers = [w.as_dict(self._host, now) for w in self._workers.values()]
            slowest = [dict(entry) for _, _, entry in
                       sorted(self._slowest, key=lambda item: item[0], reverse=True)]
            dropped = self._workers_dropped
        totals["wall_time"] = end - self._created
        totals["working_time"] = sum(w["working_time"] for w in workers)
        totals["serialization_time"] = sum(seconds.values())
        totals["serialization"] = seconds
        totals["workers_not_listed"] = dropped
        return {"totals": totals, "workers": workers, "slowest_tasks": slowest}
