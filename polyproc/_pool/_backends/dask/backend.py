"""The cluster backend of a Pool: ``DaskBackend``, chunks as tasks of a Dask cluster.

``DaskBackend`` is the ``Backend`` (``_pool/backend.py``) named ``"dask"``,
chosen by ``Pool(cluster=...)`` and ``Executor(cluster=...)``.  A task's
path::

  caller thread              | ClusterScheduler thread          | Dask workers
  Pool (_pool/api.py)        | DaskBackend._run                 | remote.run_chunk
                             |                                  |
  make_chunk: the arguments  |                                  |
  pickled in band (no        |                                  |
  shared memory: another     |                                  |
  machine)                   |                                  |
  DaskBackend.submit --------+-> _pending, a _Wake event        |
                             |  _dispatch: up to _window chunks |
                             |  as client.submit(run_chunk,     |
                             |  pure=False) ------------------->+-> record the run, run the
                             |                                  |   tasks (timed ones in a
                             |  _Done events (the future's      |   child process)
                             |  done-callback only queues it)   |
                             |  <-------------------------------+-- ChunkOutcome
                             |  _finish: gather the outcomes,   |
  ApplyResult.get, ... <-----+--  sink.deliver; lost runs ->    |
                             |    _after_lost_runs              |

One thread does the bookkeeping, as the local backend's PoolScheduler
does: callers and Dask's callback thread only put events on a queue.  So
the callbacks of ``apply_async`` and the futures of ``Executor`` complete
in this polyproc thread, in completion order, never in Dask's.

What polyproc adds over ``client.map``:

* Chunking: a Dask task costs about 2 ms of scheduling, so tasks travel in
  chunks sized by ``chunks.auto_chunksize`` (one Dask task per chunk) and
  are submitted with ``pure=False`` (Dask's default ``pure=True`` would
  merge identical calls into one).
* A window of at most ``_window`` chunks on the cluster (four per worker
  thread); the rest wait here, so that ``cancel`` and ``terminate`` have
  little to take back and an ``imap`` reads its input only as it goes.
* Large arguments: NumPy arrays (any buffer of 1 MiB or more) are left
  out of the pickled chunk (``chunks.OutOfBandPayload``) and scattered to
  the workers once (``_scattered``: known by a digest of their content),
  then passed to the task as Dask futures.
* Lost workers: see remote.py.  Dask's ``KilledWorker`` (its own limit,
  ``allowed-failures``) is mapped onto the same rule, so ``retries=N``
  reruns a task exactly N times whatever that setting is.
* The scheduler going away: every unfinished task fails with
  ``ClusterError``, and so does anything submitted later.
"""
from __future__ import annotations

import collections
import hashlib
import queue
import threading
import time
import uuid
from typing import Any, Callable, NamedTuple

from . import connect as _connect
from . import remote
from ...._exceptions import (ClusterError, InitializerError, TaskTimeoutError,
                             WorkerLostError)
from ...._transport import serialization as _serialization
from ...._transport.remote_errors import rebuild_exception
from ...backend import CLOSE, RUN, TERMINATE
from ...chunks import TaskChunk, Transport
from ...instruments import Instruments
from ...options import WorkerOptions

CHUNKS_PER_THREAD = 4   # on the cluster at once, per worker thread
SCATTER_CACHE_BYTES = 1 << 30   # large arguments kept scattered on the cluster
CONNECTION_CHECK_SECONDS = 0.5  # how often an idle ClusterScheduler looks at its client


class _Wake(NamedTuple):
    """Something was submitted, or the state changed: look again."""


class _Done(NamedTuple):
    future: Any


class _Cancel(NamedTuple):
    sink: Any


class _Flight(NamedTuple):
    """A chunk on the cluster: its Dask future and the runs lost before it."""
    chunk: TaskChunk
    future: Any
    earlier: tuple


class DaskBackend:
    """Runs TaskChunks as tasks of a Dask cluster (a ``Backend``)."""

    transport: Transport = Transport.IN_BAND

    def __init__(self, options: WorkerOptions, context: Any,
                 abort_all: Callable[[BaseException], None],
                 instruments: Instruments | None = None):
        self._instruments = Instruments() if instruments is None else instruments
        self._abort_all = abort_all
        self._maxtasks = options.max_tasks
        self._link = _connect.connect(options.cluster, options.workers)
        self.address = self._link.address
        self._pool_id = f"pool-{uuid.uuid4().hex[:16]}"
        self._plugin_name: str | None = None
        try:
            _connect.check_workers(self._link, needs_nanny=options.max_tasks is not None)
            self.size = options.workers or _connect.total_threads(self._link)
            # Manager proxies carry their authkey only where nobody can read
            # it on the way (docs/cluster.md, "Security").
            self.transport = (Transport.IN_BAND_TRUSTED if _connect.trusted_link(self._link)
                              else Transport.IN_BAND)
            self._register_initializer(options)
        except BaseException:
            self._link.close()
            raise
        self.broken: BaseException | None = None
        self.state = RUN
        self._window = CHUNKS_PER_THREAD * self.size
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: collections.deque[TaskChunk] = collections.deque()
        self._in_flight: dict[str, _Flight] = {}
        self._seconds: dict[Any, float] = {}   # function blob -> seconds per task
        self._feeders = 0
        self._lock = threading.Lock()
        # Large buffers sent to the workers: content digest -> (future, bytes).
        self._scatters: collections.OrderedDict[bytes, tuple[Any, int]] = \
            collections.OrderedDict()
        self._scatter_bytes = 0
        self._thread = threading.Thread(target=self._run, name="ClusterScheduler",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------
    # Called from caller threads (and from this thread: an Executor tops
    # up its window from a future's completion)
    # ------------------------------------------------------------------
    def submit(self, chunks: list[TaskChunk]) -> None:
        if self.broken is not None:
            for chunk in chunks:
                _fail_chunk(chunk, self.broken, self._instruments)
            return
        if self._instruments:
            self._instruments.chunks_queued(chunks, time.monotonic(), requeued=False)
        self._pending.extend(chunks)
        self._events.put(_Wake())

    def task_seconds(self, func: Any) -> float | None:
        return self._seconds.get(func)

    def add_feeder(self) -> None:
        with self._lock:
            self._feeders += 1

    def remove_feeder(self) -> None:
        with self._lock:
            self._feeders -= 1
        self._events.put(_Wake())

    def cancel(self, sink: Any) -> None:
        """Drop *sink*'s queued chunks and cancel its tasks on the cluster.

        A task already running on a worker runs to its end there (Dask
        cannot stop it, distributed#2617); its result is dropped.
        """
        self._events.put(_Cancel(sink))

    def worker_processes(self) -> list:
        return []   # on the cluster, not processes of this machine

    def close(self) -> None:
        if self.state == RUN:
            self.state = CLOSE
        self._events.put(_Wake())

    def terminate(self, kill: bool = False) -> None:
        """Cancel every task on the cluster and close what the pool owns.

        Tasks already running on a worker the pool does not own run to
        their end (Dask cannot stop them); a ``"local"`` cluster is closed,
        which stops its workers.
        """
        self.state = TERMINATE
        self._events.put(_Wake())
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def join(self, timeout: float | None = None) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------------
    # The ClusterScheduler thread
    # ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self.state != TERMINATE:
                self._handle_events()
                self._check_connection()
                self._dispatch()
                if self.state == CLOSE and self._all_done():
                    return
        except BaseException as exc:  # a bug here must not hang callers
            self._break(ClusterError(f"polyproc cluster scheduler crashed: {exc!r}",
                                     self.address))
            raise
        finally:
            self._stop()

    def _all_done(self) -> bool:
        return not self._pending and not self._in_flight and self._feeders == 0

    def _handle_events(self) -> None:
        """Wait for events; handle every one that is there (finished
        futures gathered together, one round trip for all)."""
        try:
            events = [self._events.get(timeout=CONNECTION_CHECK_SECONDS)]
        except queue.Empty:
            return  # nothing happened: _check_connection looks at the client
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        done = [e.future for e in events if isinstance(e, _Done)]
        cancels = {e.sink for e in events if isinstance(e, _Cancel)}
        if cancels:
            self._apply_cancels(cancels)
        if done:
            self._finish(done)

    def _check_connection(self) -> None:
        client = self._link.client
        if self.broken is None and client.status not in ("running", "connecting", "newly-created"):
            self._break(ClusterError(
                f"lost the connection to the Dask scheduler at {self.address} (client "
                f"status {client.status!r}): the scheduler died or the network failed. "
                f"Every unfinished task of this pool fails; create a new pool once "
                f"the scheduler is back.", self.address))

    def _dispatch(self) -> None:
        if self.broken is not None:
            self._fail_pending(self.broken)
            return
        batch: list[TaskChunk] = []
        while self._pending and len(self._in_flight) + len(batch) < self._window:
            chunk = self._pending.popleft()
            if getattr(chunk.sink, "cancelled", False):
                continue  # its call was cancelled (Ctrl-C) while it waited
            batch.append(chunk)
        if batch:
            self._scatter_new_buffers(batch)
        for chunk in batch:
            self._send(chunk, ())

    def _send(self, chunk: TaskChunk, earlier: tuple) -> None:
        key = f"polyproc-{_safe_name(chunk.func_name)}-{self._pool_id}-{chunk.chunk_id}"
        try:
            buffers = self._scattered(chunk.payload)
            job = remote.RemoteChunk(self._pool_id, key, chunk.func, bytes(chunk.payload),
                                     chunk.call, chunk.count, chunk.retries, chunk.timeout,
                                     self._maxtasks, earlier)
            future = self._link.client.submit(remote.run_chunk, job, *buffers, key=key,
                                              pure=False, retries=0)
        except Exception as error:
            self._break(ClusterError(
                f"cannot submit to the Dask scheduler at {self.address}: {error!r}",
                self.address))
            _fail_chunk(chunk, self.broken or error, self._instruments)
            return
        self._in_flight[key] = _Flight(chunk, future, earlier)
        if self._instruments:
            self._instruments.chunks_dispatched(0, [chunk], time.monotonic())
        # Dask's callback thread only queues the event: the sinks are
        # completed in this thread.
        future.add_done_callback(self._on_future_done)

    def _on_future_done(self, future: Any) -> None:
        # In Dask's callback thread: only queue it.
        self._events.put(_Done(future))

    def _scatter_new_buffers(self, chunks: list[TaskChunk]) -> None:
        """Send the large buffers of *chunks* that the workers lack, in one go.

        Buffers are known by a digest of their content: the same array in
        many chunks (or calls) is sent to the workers once, and a changed
        array is sent again.  Straight to the workers (half the time of a
        trip through the scheduler), all at once; through the scheduler
        where the workers cannot be reached from here.  The most recent
        ``SCATTER_CACHE_BYTES`` stay scattered.
        """
        new: dict[bytes, memoryview] = {}
        for chunk in chunks:
            for data, digest in zip(getattr(chunk.payload, "buffers", ()),
                                    _digests(chunk.payload)):
                if digest not in self._scatters and digest not in new:
                    new[digest] = data
        if not new:
            return
        client = self._link.client
        try:
            futures = client.scatter(list(new.values()), hash=False, direct=True)
        except OSError:
            futures = client.scatter(list(new.values()), hash=False, direct=False)
        for (digest, data), future in zip(new.items(), futures):
            self._scatters[digest] = (future, len(data))
            self._scatter_bytes += len(data)

    def _scattered(self, payload: bytes) -> list:
        """The futures of *payload*'s large buffers (scattered before, or now)."""
        buffers = getattr(payload, "buffers", ())
        futures = []
        for data, digest in zip(buffers, _digests(payload)):
            cached = self._scatters.pop(digest, None)
            if cached is None:   # a chunk sent again after its buffer left the cache
                cached = (self._link.client.scatter(data, hash=False), len(data))
                self._scatter_bytes += len(data)
            self._scatters[digest] = cached   # most recent last
            futures.append(cached[0])
        while self._scatter_bytes > SCATTER_CACHE_BYTES and len(self._scatters) > len(buffers):
            _, (_, size) = self._scatters.popitem(last=False)
            self._scatter_bytes -= size
        return futures

    # -- outcomes ---------------------------------------------------------
    def _finish(self, futures: list) -> None:
        flights = []
        for future in futures:
            flight = self._in_flight.get(future.key)
            if flight is None or flight.future is not future:
                continue  # cancelled, or a late callback
            if future.status in ("finished", "error", "cancelled"):
                flights.append(self._in_flight.pop(future.key))
            else:
                # "lost": its result died with its worker before it was
                # fetched, and Dask computes it again: wait for that.
                future.add_done_callback(self._on_future_done)
        finished = [f for f in flights if f.future.status == "finished"]
        outcomes: list = []
        if finished:
            try:
                outcomes = self._link.client.gather([f.future for f in finished])
            except Exception as error:
                # A result whose worker died before it was fetched: Dask
                # computes it again, and a gather would wait for that.
                # Fetch them one by one instead; each failure is its task's.
                outcomes = [_one_outcome(f.future) for f in finished]
                del error
        for flight, outcome in zip(finished, outcomes):
            if not isinstance(outcome, BaseException):
                self._on_outcome(flight, outcome)
            elif flight.future.status in ("finished", "error", "cancelled"):
                self._on_failed_future(flight, outcome)
            else:  # lost while it was fetched: Dask computes it again
                self._in_flight[flight.future.key] = flight
                flight.future.add_done_callback(self._on_future_done)
        for flight in flights:
            if flight in finished:
                continue
            if flight.future.status == "error":
                self._on_failed_future(flight, _one_outcome(flight.future))
            elif not getattr(flight.chunk.sink, "cancelled", False):
                # Cancelled by Dask, not by us: the scheduler went away (or
                # someone cancelled the key).
                _fail_chunk(flight.chunk, ClusterError(
                    f"the Dask scheduler at {self.address} dropped this task (status "
                    f"{flight.future.status!r}): it restarted or the connection was lost",
                    self.address), self._instruments)

    def _on_outcome(self, flight: _Flight, outcome: remote.ChunkOutcome) -> None:
        chunk = flight.chunk
        if outcome.retired:  # not run: its worker retires (maxtasksperchild)
            self._resubmit(chunk.subchunk(0, chunk.count), flight.earlier)
            return
        if not outcome.ran:
            self._after_lost_runs(flight, outcome.earlier)
            return
        if -1 in outcome.errors:  # the function or arguments did not load
            exc = rebuild_exception(outcome.errors[-1])
            _fail_chunk(chunk, exc, self._instruments)
            return
        errors = {i: rebuild_exception(p) for i, p in outcome.errors.items()}
        for i, stop in outcome.stopped.items():
            errors[i] = self._stopped_error(chunk, i, stop, outcome)
        if outcome.values:
            seconds = outcome.seconds / len(outcome.values)
            old = self._seconds.get(chunk.func)
            self._seconds[chunk.func] = seconds if old is None else (old + seconds) / 2
        if self._instruments:
            self._instruments.chunk_ran(outcome.pid, chunk, len(errors), outcome.started,
                                        outcome.started + outcome.seconds)
        chunk.sink.deliver(chunk.start, outcome.values, errors)

    def _stopped_error(self, chunk: TaskChunk, index: int, stop: remote.StoppedTask,
                       outcome: remote.ChunkOutcome) -> BaseException:
        task = chunk.describe_task(index)
        if stop.timed_out:
            return TaskTimeoutError(
                f"task {task} ran longer than its timeout of {chunk.timeout} s; the "
                f"process running it (pid {stop.pid}, a child of the Dask worker "
                f"{outcome.worker}) was killed, and the pool goes on", chunk.timeout, task)
        from ..process.blame import describe_exit
        return WorkerLostError(
            f"the process running task {task} (pid {stop.pid}, a child of the Dask "
            f"worker {outcome.worker}, which ran it because of its timeout) "
            f"{describe_exit(stop.exitcode)}", stop.pid, stop.exitcode, task)

    def _on_failed_future(self, flight: _Flight, error: BaseException) -> None:
        """The Dask task itself failed: Dask's ``KilledWorker`` (its own limit
        of lost workers), or something in Dask."""
        from distributed.scheduler import KilledWorker
        if isinstance(error, KilledWorker):
            runs = self._recorded_runs(flight)
            self._after_lost_runs(flight, flight.earlier + runs, killed=error)
            return
        _fail_chunk(flight.chunk, ClusterError(
            f"the Dask task running {flight.chunk.describe_task(0)} failed in Dask: "
            f"{error!r}", self.address), self._instruments)

    def _recorded_runs(self, flight: _Flight) -> tuple:
        try:
            runs = self._link.client.get_metadata(
                [remote.METADATA_ROOT, self._pool_id, flight.future.key], None)
        except Exception:
            runs = None
        return tuple((r[0], r[1]) for r in runs or () if not r[2])

    def _after_lost_runs(self, flight: _Flight, runs: tuple,
                         killed: BaseException | None = None) -> None:
        """Workers were lost under *flight*'s chunk (*runs*: each lost run).

        A chunk of several tasks runs again as one-task chunks, uncharged
        (which of its tasks killed the worker is not known); a one-task
        chunk runs again while it has retries left, else fails with
        ``WorkerLostError`` naming the last worker lost.
        """
        chunk = flight.chunk
        if not runs:  # queued on a lost worker, never started (KilledWorker)
            self._resubmit(chunk.subchunk(0, chunk.count), ())
        elif chunk.count > 1:
            for i in range(chunk.count):
                self._resubmit(chunk.subchunk(i, i + 1), ())
        elif len(runs) <= chunk.retries:
            self._resubmit(chunk.subchunk(0, 1), runs)
        else:
            address, pid = runs[-1]
            task = chunk.describe_task(0)
            error = WorkerLostError(
                f"the Dask worker {address} (pid {pid}) running task {task} was lost "
                f"(killed: by a signal, the OOM killer or its nanny; or its machine "
                f"went away). The cluster goes on; pass retries=N to run such a task "
                f"again on another worker.", pid, None, task)
            error.__cause__ = killed
            _fail_chunk(chunk, error, self._instruments)

    def _resubmit(self, chunk: TaskChunk, earlier: tuple) -> None:
        if self._instruments:
            self._instruments.chunks_queued([chunk], time.monotonic(), requeued=True)
        self._send(chunk, earlier)

    # -- cancellation, breaking, stopping -----------------------------------
    def _apply_cancels(self, sinks: set) -> None:
        # Emptied from the left while callers may append (submit): what
        # stays goes back in front of anything appended meanwhile.
        kept = []
        while self._pending:
            chunk = self._pending.popleft()
            if chunk.sink not in sinks:
                kept.append(chunk)
        self._pending.extendleft(reversed(kept))
        futures = [f.future for k, f in list(self._in_flight.items())
                   if f.chunk.sink in sinks and self._in_flight.pop(k)]
        if futures:
            try:
                self._link.client.cancel(futures)
            except Exception:
                pass

    def _fail_pending(self, error: BaseException) -> None:
        while self._pending:
            _fail_chunk(self._pending.popleft(), error, self._instruments)

    def _break(self, error: BaseException) -> None:
        if self.broken is None:
            self.broken = error
        flights = list(self._in_flight.values())
        self._in_flight.clear()
        for flight in flights:
            _fail_chunk(flight.chunk, self.broken, self._instruments)
        self._fail_pending(self.broken)
        self._abort_all(self.broken)

    def _stop(self) -> None:
        """Cancel what is left on the cluster; give back what the pool owns."""
        from ...._exceptions import ProcessError
        futures = [f.future for f in self._in_flight.values()]
        self._in_flight.clear()
        self._scatters.clear()   # the workers may forget the scattered data
        client = self._link.client
        connected = client.status == "running"
        if futures and connected:
            try:
                client.cancel(futures)
            except Exception:
                pass
        if connected:
            try:
                # Forget the pool's record of runs (remote._record_run).
                client.set_metadata([remote.METADATA_ROOT, self._pool_id], None)
                if self._plugin_name is not None:
                    client.unregister_worker_plugin(self._plugin_name)
            except Exception:
                pass
        self._link.close()
        if self.state == TERMINATE:
            self._fail_pending(ProcessError("the pool was terminated"))
            self._abort_all(ProcessError("the pool was terminated"))

    # -- set-up --------------------------------------------------------------
    def _register_initializer(self, options: WorkerOptions) -> None:
        """Run the initializer in every worker, now and in those that start
        later (``remote.InitializerPlugin``); ``InitializerError`` if it raises."""
        if options.initializer is None:
            return
        from ...chunks import function_blob
        plugin = remote.InitializerPlugin(
            self._pool_id, function_blob(options.initializer, Transport.IN_BAND),
            _serialization.dumps_in_band(options.initargs, "initargs"))
        name = f"polyproc-initializer-{self._pool_id}"
        try:
            self._link.client.register_plugin(plugin, name=name)
        except Exception as exc:
            error = InitializerError(
                f"the pool's initializer {getattr(options.initializer, '__qualname__', '?')}() "
                f"raised {type(exc).__name__}: {exc} on a Dask worker; the pool cannot "
                f"run tasks. Fix the initializer, then create a new pool.")
            raise error from exc
        self._plugin_name = name


def _digests(payload: Any) -> list[bytes]:
    """The content digests of an ``OutOfBandPayload``'s buffers (computed once)."""
    digests = getattr(payload, "digests", None)
    if digests is None:
        digests = [hashlib.sha1(data).digest() for data in getattr(payload, "buffers", ())]
        if digests:
            payload.digests = digests
    return digests


def _one_outcome(future: Any) -> Any:
    """The outcome of one finished or failed future, or the exception it holds."""
    try:
        if future.status == "error":
            return future.exception(timeout=_connect.CONNECT_SECONDS)
        return future.result(timeout=_connect.CONNECT_SECONDS)
    except BaseException as error:
        return error


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in name)[:40]


def _fail_chunk(chunk: TaskChunk, exc: BaseException,
                instruments: Instruments | None = None) -> None:
    if instruments:
        instruments.tasks_failed(chunk.chunk_id, chunk.sink, chunk.start, chunk.count,
                                 exc, time.monotonic())
    chunk.sink.deliver(chunk.start, [None] * chunk.count,
                       dict.fromkeys(range(chunk.count), exc))
