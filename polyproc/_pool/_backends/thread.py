"""The thread backend behind ``polyproc.pool.ThreadPool``: ``load("thread")``.

The same Pool API layer (``_pool/api.py``) on worker *threads*: chunks are
passed as objects, never pickled (``Transport.NONE``: locks, sockets and
lambdas are fine as arguments, as with the stdlib's ThreadPool), and run by
``size`` threads pulling from one queue.  It also keeps the API layer
honest about the ``Backend`` protocol (``_pool/backend.py``): nothing in
that layer may assume processes.

Threads cannot be killed, so ``timeout=`` is refused with a clear error
rather than promised and not kept; ``retries=`` is accepted and never
needed (a thread does not die under a task).  For the same reason a call
cancelled by Ctrl-C (``cancel``) only loses its queued chunks: the tasks
already running finish, and their results are dropped.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
import traceback
from typing import Any, Callable

from ..._process.fork_pause import join_os_thread
from ..chunks import TaskChunk, Transport, item_caller
from ..instruments import Instruments
from ..options import WorkerOptions

_STOP = None


class ThreadBackend:
    """Runs TaskChunks on worker threads of this process (a ``Backend``)."""

    transport = Transport.NONE
    broken: BaseException | None = None   # a thread backend never breaks

    def __init__(self, options: WorkerOptions, context: Any,
                 abort_all: Callable[[BaseException], None],
                 instruments: Instruments | None = None):
        processes = options.workers
        self.size = processes
        # Fired in the caller's thread (chunk_queued) and the worker threads.
        self._instruments = Instruments() if instruments is None else instruments
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._abort_all = abort_all
        self._initializer = options.initializer
        self._initargs = options.initargs
        self._lock = threading.Lock()
        self._feeders = 0
        self._closed = False
        self._terminated = False
        self._task_seconds: float | None = None
        # The chunk each worker thread runs (by thread ident), for stacks().
        self._running: dict[int, TaskChunk] = {}
        self._threads = [threading.Thread(target=self._work, name=f"PolyThreadWorker-{i + 1}",
                                          daemon=True) for i in range(processes)]
        for t in self._threads:
            t.start()

    def submit(self, chunks: list[TaskChunk]) -> None:
        for chunk in chunks:
            if chunk.timeout is not None:
                raise ValueError("ThreadPool does not support timeout=: a thread "
                                 "cannot be stopped; use polyproc.Pool for timeouts")
        if self._instruments:
            self._instruments.chunks_queued(chunks, time.monotonic(), requeued=False)
        for chunk in chunks:
            self._queue.put(chunk)

    def task_seconds(self, func) -> float | None:
        return self._task_seconds

    def add_feeder(self) -> None:
        with self._lock:
            self._feeders += 1

    def remove_feeder(self) -> None:
        with self._lock:
            self._feeders -= 1
            stop = self._closed and self._feeders == 0
        if stop:
            self._stop_threads()

    def cancel(self, sink) -> None:
        """Skip the queued chunks of *sink*'s call (the registry has set
        ``sink.cancelled``; ``_work`` checks it); running ones finish."""

    def worker_processes(self) -> list:
        return []  # threads of this process

    def stacks(self, timeout: float = 1.0) -> dict[int, str]:
        """``{native thread id: text}`` of each live worker thread: the chunk
        it runs and its stack (``sys._current_frames``, no signal: the
        threads are this process's).  Never waits; *timeout* is unused."""
        frames = sys._current_frames()
        texts: dict[int, str] = {}
        for thread in self._threads:
            ident, native_id = thread.ident, thread.native_id
            if ident is None or native_id is None or ident not in frames:
                continue  # not started, or ended
            frame = frames[ident]
            chunk = self._running.get(ident)
            held = "holds no task\n" if chunk is None else (
                f"running {chunk.func_name} "
                f"{_task_range(chunk.start, chunk.count)}\n")
            texts[native_id] = (
                held + f"Thread {thread.name} (most recent call last):\n"
                + "".join(traceback.format_stack(frame)))
        return texts

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stop = self._feeders == 0
        if stop:
            self._stop_threads()

    def terminate(self, kill: bool = False) -> None:
        # Threads cannot be killed: each stops after its current task.
        self._terminated = True
        self._stop_threads()
        self.join()

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            if t is not threading.current_thread():
                join_os_thread(t, timeout)

    def _stop_threads(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)

    def _work(self) -> None:
        if self._initializer is not None:
            self._initializer(*self._initargs)
        while True:
            chunk = self._queue.get()
            if chunk is _STOP or self._terminated:
                return
            if chunk.sink.cancelled:
                if self._instruments:
                    self._instruments.chunks_cancelled([chunk], time.monotonic())
                continue
            ident = threading.get_ident()
            self._running[ident] = chunk
            try:
                self._run_chunk(chunk)
            finally:
                del self._running[ident]
            # Not kept while waiting for the next one: the chunk holds the
            # task's function and arguments, which must die with the task.
            del chunk

    def _run_chunk(self, chunk: TaskChunk) -> None:
        call_fn = item_caller(chunk.func, chunk.call)
        values: list = [None] * chunk.count
        errors: dict = {}
        started = time.monotonic()
        if self._instruments:
            self._instruments.chunks_dispatched(os.getpid(), [chunk], started)
        for i, item in enumerate(chunk.items):
            try:
                values[i] = call_fn(item)
            except BaseException as exc:
                errors[i] = exc
        finished = time.monotonic()
        self._task_seconds = (finished - started) / max(1, chunk.count)
        if self._instruments:
            self._instruments.chunk_ran(os.getpid(), chunk, len(errors), started, finished)
        chunk.sink.deliver(chunk.start, values, errors)


def _task_range(start: int, count: int) -> str:
    return f"task {start}" if count == 1 else f"tasks {start}..{start + count - 1}"


backend_class = ThreadBackend
