"""``Pool(timeline=...)``: a pool's events as a Chrome Trace Event file.

The file is the JSON object form of the Trace Event Format, which Perfetto
(ui.perfetto.dev) and ``chrome://tracing`` open as they are, and which
``python -m polyproc plot`` draws::

    {"traceEvents": [...], "displayTimeUnit": "ms",
     "otherData": {"producer": "polyproc", "max_events": N,
                   "events_recorded": ..., "events_dropped": ..., ...}}

What is in it (``ts`` and ``dur`` in microseconds since the pool was made):

* one track per worker process: its ``pid`` is the worker's, named by ``M``
  events ``"worker <slot> (pid <pid>)"``; the pool's own process is the
  track ``"pool (pid <pid>)"``.  A ThreadPool's tracks are its threads.
* per chunk, an ``X`` event (``cat`` ``"chunk"``, named after the function)
  from the moment its worker began unpickling it to the end of its last
  task, with nested ``X`` phases ``"unpickle"`` and ``"run"``; its ``args``:
  call, first task, tasks, failed, and the seconds it was ``queued`` (from
  submission to the worker starting it; a worker runs the chunks it holds in
  order, so this includes waiting behind them).  Each results message a
  worker pickles is an ``X`` event ``"pickle results"`` (``cat``
  ``"results"``, several chunks share one), and a worker's start-up (spawn
  to ready) an ``X`` event ``"start-up"``.  The chunk a worker was running
  when it died or was killed is an ``X`` event with ``args`` ``lost``: true,
  from the end of its previous chunk (or its dispatch) to the death.
* instants (``i``) on a worker's track: its exit (``cat`` ``"worker"``,
  ``args`` reason, exitcode and signal; named ``"worker lost (SIGKILL)"``
  and the like), a task retried after its worker died (``"retry"``) or
  killed for its timeout (``"timeout"``); on the pool's track, tasks that
  failed without a worker's outcome (``"tasks failed"``) and queued chunks
  of a call cancelled by Ctrl-C (``"cancelled"``).
* a counter (``C``) ``"tasks"`` on the pool's track: tasks ``queued`` and
  ``in flight`` (sent to a worker, outcome not back).

Bounded.  Events are kept in a ring of the last ``max_events`` (the
``timeline_events=`` of Pool and Executor); older ones are dropped, and
``otherData`` says how many were recorded and dropped.  The bookkeeping
of chunks in progress and of worker names is bounded by the same number
(past it, the names of workers that exited are forgotten first, never
a live worker's).

An instrument: events arrive in the scheduler thread (a ThreadPool's worker
threads), ``write()`` may be called from any thread, so both take a lock.
"""
from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import Any

from .._pool.instruments import (ChunkCancelled, ChunkDispatched, ChunkFailed,
                                 ChunkFinished, ChunkQueued, Instrument, ResultsReceived,
                                 TaskRetried, TaskTimedOut, WorkerExited, WorkerStarted)

__all__ = ["Timeline", "DEFAULT_MAX_EVENTS", "check_max_events"]

# About 530 bytes of memory per event kept (measured: a map of one-task
# chunks), 125 in the file: some 25 MB and 6 MB at most, about 8,000 chunks.
DEFAULT_MAX_EVENTS = 50_000

# Index of each field of a chunk's bookkeeping list (_chunks).
_QUEUED, _TASKS, _FUNCTION, _DISPATCHED, _SENT_AT = 0, 1, 2, 3, 4


def check_max_events(max_events: int) -> None:
    """``timeline_events=``: ``ValueError`` unless an int >= 1."""
    if not isinstance(max_events, int) or isinstance(max_events, bool) or max_events < 1:
        raise ValueError(f"timeline_events must be an int >= 1, not {max_events!r}")


class Timeline(Instrument):
    """Records a pool's events as trace events, in a ring (see the module docstring)."""

    def __init__(self, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        check_max_events(max_events)
        self._lock = threading.Lock()
        self._max_events = max_events
        self._origin = time.monotonic()
        self._origin_wall = time.time()
        self._pid = os.getpid()
        self._events: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=max_events)
        self._recorded = 0
        # chunk_id -> [queued at, tasks, function, dispatched to (pid) or None,
        #              dispatched at]
        self._chunks: dict[int, list[Any]] = {}
        self._tracks: dict[int, str] = {}    # pid (or thread id) -> its name
        self._ended_tracks: set[int] = set()  # those of workers that exited
        self._idle_since: dict[int, float] = {}  # worker pid -> end of its last chunk
        self._queued = 0
        self._in_flight = 0

    # -- helpers (called with the lock held) -------------------------------
    def _us(self, t: float) -> float:
        return round((t - self._origin) * 1e6, 3)

    def _add(self, event: dict[str, Any]) -> None:
        self._events.append(event)
        self._recorded += 1

    def _name_track(self, track: int, name: str) -> None:
        tracks = self._tracks
        tracks.pop(track, None)
        tracks[track] = name
        self._ended_tracks.discard(track)
        if len(tracks) > self._max_events:
            self._forget_an_ended_track()

    def _forget_an_ended_track(self) -> None:
        """Forget the name of the oldest track whose worker exited.

        Never a live worker's: its events keep coming, and a track without
        a name shows as a bare pid.  Live workers are as many as the pool's
        processes (or threads), so the names stay bounded.
        """
        for track in self._tracks:
            if track in self._ended_tracks:
                del self._tracks[track]
                self._ended_tracks.discard(track)
                return

    def _track_of(self, pid: int) -> int:
        """The track of an event from worker *pid*: a ThreadPool's are its threads."""
        if pid != self._pid:
            return pid
        thread = threading.get_native_id()
        if thread not in self._tracks:
            self._name_track(thread, f"thread {threading.current_thread().name}")
        return thread

    def _count(self, t: float) -> None:
        self._add({"ph": "C", "name": "tasks", "pid": self._pid, "tid": self._pid,
                   "ts": self._us(t),
                   "args": {"queued": self._queued, "in flight": self._in_flight}})

    def _instant(self, name: str, cat: str, track: int, t: float,
                 args: dict[str, Any]) -> None:
        self._add({"ph": "i", "s": "p", "name": name, "cat": cat, "pid": track,
                   "tid": track, "ts": self._us(t), "args": args})

    def _complete(self, name: str, cat: str, track: int, start: float, seconds: float,
                  args: dict[str, Any] | None = None) -> None:
        event = {"ph": "X", "name": name, "cat": cat, "pid": track, "tid": track,
                 "ts": self._us(start), "dur": round(max(seconds, 0.0) * 1e6, 3)}
        if args:
            event["args"] = args
        self._add(event)

    def _settle(self, chunk_id: int | None) -> list[Any] | None:
        """Forget chunk *chunk_id*: its tasks are no longer queued or in flight."""
        entry = self._chunks.pop(chunk_id, None) if chunk_id is not None else None
        if entry is not None:
            if entry[_DISPATCHED] is None:
                self._queued -= entry[_TASKS]
            else:
                self._in_flight -= entry[_TASKS]
        return entry

    # -- events -----------------------------------------------------------
    def chunk_queued(self, info: ChunkQueued) -> None:
        with self._lock:
            chunks = self._chunks
            chunks[info.chunk_id] = [info.time, info.tasks, info.function, None, 0.0]
            if len(chunks) > self._max_events:  # never settled (a cancelled call)
                self._settle(next(iter(chunks)))
            self._queued += info.tasks
            self._count(info.time)

    def chunk_dispatched(self, info: ChunkDispatched) -> None:
        with self._lock:
            entry = self._chunks.get(info.chunk_id)
            if entry is None or entry[_DISPATCHED] is not None:
                return
            entry[_DISPATCHED] = info.pid
            entry[_SENT_AT] = info.time
            self._queued -= entry[_TASKS]
            self._in_flight += entry[_TASKS]
            self._count(info.time)

    def results_received(self, info: ResultsReceived) -> None:
        with self._lock:
            self._complete("pickle results", "results", info.pid, info.dump_started,
                           info.dump_seconds,
                           {"chunks": len(info.chunk_ids), "bytes": info.nbytes,
                            "shared_memory_bytes": info.shared_bytes})

    def chunk_finished(self, info: ChunkFinished) -> None:
        with self._lock:
            entry = self._settle(info.chunk_id)
            track = self._track_of(info.pid)
            args: dict[str, Any] = {"chunk": info.chunk_id, "call": info.call_id,
                                    "first_task": info.start, "tasks": info.tasks,
                                    "failed": info.failed}
            name = "chunk"
            if entry is not None:
                name = entry[_FUNCTION]
                args["queued"] = round(max(0.0, info.started - entry[_QUEUED]), 6)
            args["unpickle"] = round(info.load_seconds, 6)
            args["run"] = round(info.run_seconds, 6)
            self._complete(name, "chunk", track, info.started,
                           info.load_seconds + info.run_seconds, args)
            if info.load_seconds > 0:
                self._complete("unpickle", "phase", track, info.started, info.load_seconds)
            self._complete("run", "phase", track, info.started + info.load_seconds,
                           info.run_seconds)
            if track == info.pid:
                self._idle_since[info.pid] = info.started + info.load_seconds + \
                    info.run_seconds
            self._count(info.time)

    def chunk_failed(self, info: ChunkFailed) -> None:
        with self._lock:
            self._settle(info.chunk_id)
            self._instant("tasks failed", "failure", self._pid, info.time,
                          {"call": info.call_id, "first_task": info.start,
                           "tasks": info.tasks, "error": _short(repr(info.error))})
            self._count(info.time)

    def chunk_cancelled(self, info: ChunkCancelled) -> None:
        with self._lock:
            self._settle(info.chunk_id)
            self._instant("cancelled", "cancelled", self._pid, info.time,
                          {"call": info.call_id, "first_task": info.start,
                           "tasks": info.tasks})
            self._count(info.time)

    def task_retried(self, info: TaskRetried) -> None:
        with self._lock:
            self._instant("retry", "retry", info.pid, info.time,
                          {"call": info.call_id, "task": info.position,
                           "retries_left": info.retries_left})

    def task_timed_out(self, info: TaskTimedOut) -> None:
        with self._lock:
            self._instant("timeout", "timeout", info.pid, info.time,
                          {"call": info.call_id, "task": info.position,
                           "timeout": info.timeout,
                           "ran": round(info.time - info.started, 6)})

    def worker_started(self, info: WorkerStarted) -> None:
        with self._lock:
            self._name_track(info.pid, f"worker {info.slot} (pid {info.pid})")
            self._complete("start-up", "start-up", info.pid, info.spawned,
                           info.ready - info.spawned,
                           {"process": round(info.entered - info.spawned, 6),
                            "initializer": round(info.ready - info.entered, 6),
                            "replaces": info.replaces})

    def worker_exited(self, info: WorkerExited) -> None:
        with self._lock:
            if info.pid not in self._tracks:  # died before it was ready
                self._name_track(info.pid, f"worker {info.slot} (pid {info.pid})")
            self._ended_tracks.add(info.pid)
            idle_since = self._idle_since.pop(info.pid, None)
            for index, chunk_id in enumerate(info.chunk_ids):
                entry = self._settle(chunk_id)
                if index == 0 and entry is not None and entry[_DISPATCHED] is not None:
                    self._lost_chunk(chunk_id, entry, info, idle_since)
            cause = info.signal or (f"exit code {info.exitcode}"
                                    if info.exitcode is not None else "")
            name = f"worker {info.reason}" + (f" ({cause})" if cause else "")
            self._instant(name, "worker", info.pid, info.time,
                          {"reason": info.reason, "exitcode": info.exitcode,
                           "signal": info.signal, "chunks_held": len(info.chunk_ids)})
            self._count(info.time)

    def _lost_chunk(self, chunk_id: int, entry: list[Any], info: WorkerExited,
                    idle_since: float | None) -> None:
        """The chunk a worker held first when it exited: it ran until then.

        When it started is not reported (the worker died before it could
        say): the latest of its dispatch and the end of the worker's
        previous chunk, a bound the args call ``started_at_most``.
        """
        start = max(entry[_SENT_AT], idle_since or 0.0)
        self._complete(entry[_FUNCTION], "chunk", info.pid, start, info.time - start,
                       {"chunk": chunk_id, "tasks": entry[_TASKS], "lost": True,
                        "reason": info.reason, "started_at_most": True})

    def pool_stopped(self) -> None:
        """The pool is done (joined or terminated): nothing is queued or in
        flight any more.  ``terminate`` fails what was, without a chunk event:
        settle it, so that the counter ends at zero."""
        with self._lock:
            if not self._chunks and not self._queued and not self._in_flight:
                return
            self._chunks.clear()
            self._queued = self._in_flight = 0
            self._count(time.monotonic())

    # -- the file ---------------------------------------------------------
    def trace(self) -> dict[str, Any]:
        """The trace as a JSON-serialisable dict (what ``write`` writes)."""
        with self._lock:
            events = list(self._events)
            tracks = dict(self._tracks)
            recorded = self._recorded
        used = {e["pid"] for e in events} | {self._pid}
        metadata: list[dict[str, Any]] = [
            {"ph": "M", "name": "process_name", "pid": self._pid, "tid": self._pid,
             "args": {"name": f"pool (pid {self._pid})"}},
            {"ph": "M", "name": "process_sort_index", "pid": self._pid, "tid": self._pid,
             "args": {"sort_index": -1}},
        ]
        for order, (track, name) in enumerate(tracks.items()):
            if track in used:
                metadata.append({"ph": "M", "name": "process_name", "pid": track,
                                 "tid": track, "args": {"name": name}})
                metadata.append({"ph": "M", "name": "process_sort_index", "pid": track,
                                 "tid": track, "args": {"sort_index": order}})
        return {
            "traceEvents": metadata + events,
            "displayTimeUnit": "ms",
            "otherData": {
                "producer": "polyproc",
                "pool_pid": self._pid,
                "started_at_unix": self._origin_wall,
                "max_events": self._max_events,
                "events_recorded": recorded,
                "events_dropped": recorded - len(events),
            },
        }

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the trace to *path* (JSON), replacing it whole.

        Written to a temporary file beside it, then renamed: a reader never
        sees half a file.  The temporary file is this thread's own, so
        threads writing the same *path* at once (a user's thread while the
        pool writes its ``timeline=`` file) each replace it whole.  Raises
        ``OSError`` if it cannot be written, naming *path*.
        """
        path = os.fspath(path)
        trace = self.trace()
        temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump(trace, file, separators=(",", ":"))
            os.replace(temporary, path)
        except BaseException as error:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            if isinstance(error, OSError) and error.filename == temporary:
                # The user asked for *path*: the temporary name would puzzle.
                raise type(error)(error.errno, error.strerror, path) from None
            raise


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
