"""What runs inside a Dask worker process: one polyproc chunk per Dask task.

The client (``backend.py``) submits ``run_chunk(RemoteChunk)`` as one Dask
task per ``TaskChunk``.  Here, in the Dask worker, it:

1. records the run in the scheduler's task metadata (``_record_run``) and
   reads the runs recorded before it; a run that ends marks itself
   finished (``_mark_finished``).  Dask reruns a task whose worker was
   lost, up to its ``allowed-failures``, and its ``retries=`` counts only
   exceptions; an earlier run recorded for this chunk and not finished
   therefore means a worker died under it.  (A finished run whose result
   died with its worker before the client fetched it is run again, and
   not counted.)  A one-task chunk then runs only while it has
   retries left (``retries=N``: at most N reruns, counted here, exactly); a
   chunk of several tasks is not run at all but handed back, so that the
   client splits it into one-task chunks (the task that killed the worker
   is not known: as the local backend's blame.py does for a death while a
   chunk loads).  Either way the outcome says which worker (address, pid)
   was lost, for the ``WorkerLostError``.
2. runs the tasks: in this process; or, when the chunk has a ``timeout``,
   in a child process forked for it (``_run_in_children``), which is killed
   when a task runs too long: Dask cannot stop a running task
   (distributed#391), a process can be.  The tasks after the one that timed
   out run in a new child.
3. counts chunks per worker process for ``maxtasksperchild``: after that
   many, the worker runs no more chunks (the client submits them again)
   and closes; its nanny starts a new one (``_retiring``).

Exceptions travel as ``remote_errors`` payloads (type and remote
traceback kept); the client rebuilds them.

``InitializerPlugin`` is the ``WorkerPlugin`` that runs the pool's
initializer in every worker process, including those that start later.  An
initializer and task functions defined in the client's ``__main__`` arrive
by value (cloudpickle), each with a globals dict of its own; the task
functions are rebound to the initializer's globals (``_shared_main``), so
that a task sees what the initializer set, as in a local pool.
"""
from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import time
import traceback
import types
from multiprocessing.connection import Connection
from typing import Any, Callable, NamedTuple

from distributed import WorkerPlugin

from ...chunks import item_caller
from ...._transport import serialization as _serialization
from ...._transport.remote_errors import exception_payload
from ...._exceptions import SerializationError, UnloadableError

METADATA_ROOT = "polyproc"


class RemoteChunk(NamedTuple):
    """One chunk as the Dask task receives it."""
    pool: str           # the pool's id: its namespace in the scheduler's metadata
    key: str            # the Dask key of this task
    func: bytes         # the pickled function
    payload: bytes      # the pickled list of items (in band)
    call: int           # messages.CALL_*
    items: int          # number of items
    retries: int        # reruns allowed after a lost worker
    timeout: float | None
    maxtasks: int | None
    earlier: tuple      # ((address, pid), ...) runs lost before this key existed


class StoppedTask(NamedTuple):
    """A task whose child process was stopped (timeout) or died."""
    timed_out: bool
    exitcode: int | None
    pid: int


class ChunkOutcome(NamedTuple):
    """What ``run_chunk`` returns to the client."""
    ran: bool           # False: not run, an earlier run lost its worker (``earlier``)
    values: list
    errors: dict        # index -> exception payload; -1: the chunk did not load
    stopped: dict       # index -> StoppedTask
    started: float      # time.monotonic() here when the task began
    seconds: float
    worker: str         # this worker's address
    pid: int
    earlier: tuple      # ((address, pid), ...) of the runs lost before this one
    retired: bool = False  # not run: this worker retires (maxtasksperchild)
    load_seconds: float = 0.0  # of ``seconds``: unpickling the function and arguments
    host: str = ""      # this worker's host name
    clock: float = 0.0  # time.time() - time.monotonic() here: puts ``started``
                        # on the client's clock (machines' monotonic clocks differ)


# -- the Dask task ------------------------------------------------------------

def run_chunk(job: RemoteChunk, *buffers: bytes) -> ChunkOutcome:
    """Run one chunk in this Dask worker (the task the client submits).

    *buffers*: the large buffers left out of ``job.payload``
    (``chunks.OutOfBandPayload``), scattered to the workers once and
    passed by Dask as the data of their futures.
    """
    from distributed import get_worker
    worker = get_worker()
    if _retiring(worker, job):
        return ChunkOutcome(False, [], {}, {}, time.monotonic(), 0.0, worker.address,
                            os.getpid(), (), retired=True)
    record = _record_run(worker, job)
    earlier = tuple(job.earlier) + tuple((a, p) for a, p, finished in record[:-1]
                                         if not finished)
    lost = len(earlier) - len(job.earlier)
    started = time.monotonic()
    if earlier and ((job.items > 1 and lost) or len(earlier) > job.retries):
        return ChunkOutcome(False, [], {}, {}, started, 0.0, worker.address,
                            os.getpid(), earlier)
    values: list = []
    errors: dict[int, bytes] = {}
    stopped: dict[int, StoppedTask] = {}
    loaded = started
    try:
        fn = _load_function(job)
        items = _load_items(job.payload, buffers)
    except BaseException as exc:
        if isinstance(exc, SerializationError):
            exc = _unloadable(exc, worker.address)
        errors[-1] = exception_payload(exc)
    else:
        loaded = time.monotonic()
        call_fn = item_caller(fn, job.call)
        if job.timeout is None:
            _run_here(call_fn, items, values, errors)
        else:
            _run_in_children(call_fn, items, job.timeout, values, errors, stopped)
    ended = time.monotonic()
    outcome = ChunkOutcome(True, values, errors, stopped, started, ended - started,
                           worker.address, os.getpid(), earlier,
                           load_seconds=loaded - started,
                           host=socket.gethostname(), clock=time.time() - time.monotonic())
    _mark_finished(worker, job, record)
    _count_for_maxtasks(worker, job)
    return outcome


def _record_run(worker: Any, job: RemoteChunk) -> list:
    """Add this run to the chunk's record in the scheduler; return the record.

    The record is ``[address, pid, finished]`` per run, this one last.  Two
    calls to the scheduler (about a millisecond on a LAN).  No two runs of
    one key overlap (Dask runs a key on one worker at a time), so a read
    then a write is enough.
    """
    from distributed.utils import sync
    path = [METADATA_ROOT, job.pool, job.key]
    runs = sync(worker.loop, worker.scheduler.get_metadata, keys=path, default=None) or []
    runs = [list(r) for r in runs] + [[worker.address, os.getpid(), False]]
    sync(worker.loop, worker.scheduler.set_metadata, keys=path, value=runs)
    return runs


def _mark_finished(worker: Any, job: RemoteChunk, record: list) -> None:
    """Mark this run finished in the record, without waiting for it.

    Dask keeps a result on its worker until the client fetches it: if the
    worker dies first, Dask runs the task again, and that rerun must not
    count as a lost run (the task did finish).  Should the worker die
    before this message leaves, the run counts as lost: it died as the
    task ended.
    """
    record[-1][2] = True
    worker.loop.add_callback(worker.scheduler.set_metadata,
                             keys=[METADATA_ROOT, job.pool, job.key], value=record)


def _load_items(payload: bytes, buffers: tuple) -> list:
    if not buffers:
        return _serialization.loads(payload, "task arguments")
    try:
        # A copy each: the scattered data is shared by every task on this
        # worker, and a task may change its arrays in place.
        return pickle.loads(payload, buffers=[bytearray(b) for b in buffers])
    except Exception as error:
        raise SerializationError(
            f"cannot unpickle task arguments: {error!r}. The class or function it "
            "refers to must be importable in the receiving process.") from error


def _run_here(call_fn: Callable, items: list, values: list, errors: dict) -> None:
    for i, item in enumerate(items):
        try:
            values.append(call_fn(item))
        except BaseException as exc:
            errors[i] = exception_payload(exc)
            values.append(None)


# -- timed chunks: a child process per run of tasks ---------------------------

def _run_in_children(call_fn: Callable, items: list, timeout: float, values: list,
                     errors: dict, stopped: dict) -> None:
    """Run *items* in forked children; a task past *timeout* is killed with its child.

    The child sends each task's outcome as it finishes; the parent waits
    at most *timeout* for each.  Fork, not spawn: the child must have the
    task's function and the initializer's state, and must start in
    milliseconds.  (The child only runs the tasks and ``os._exit``s: it
    never touches the worker's event loop or its locks.)
    """
    begin = 0
    while begin < len(items):
        child, conn = _fork_child(call_fn, items, begin)
        index = begin
        try:
            while index < len(items):
                if not conn.poll(timeout):
                    os.kill(child, signal.SIGKILL)
                    os.waitpid(child, 0)
                    stopped[index] = StoppedTask(True, -signal.SIGKILL, child)
                    values.append(None)
                    index += 1
                    break
                try:
                    ok, data = pickle.loads(conn.recv_bytes())
                except EOFError:  # the child died in task `index`
                    _, status = os.waitpid(child, 0)
                    stopped[index] = StoppedTask(False, _exitcode(status), child)
                    values.append(None)
                    index += 1
                    break
                if ok:
                    values.append(data)
                else:
                    errors[index] = data
                    values.append(None)
                index += 1
            else:
                os.waitpid(child, 0)
        finally:
            conn.close()
        begin = index


def _fork_child(call_fn: Callable, items: list, begin: int) -> tuple[int, Connection]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        out = Connection(write_fd, readable=False)
        code = 0
        try:
            for item in items[begin:]:
                try:
                    message = (True, call_fn(item))
                    data = pickle.dumps(message, _serialization.PROTOCOL)
                except BaseException as exc:
                    data = pickle.dumps((False, exception_payload(exc)),
                                        _serialization.PROTOCOL)
                out.send_bytes(data)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, Connection(read_fd, writable=False)


def _exitcode(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


# -- stacks: what a worker runs for a pool (``DaskBackend.stacks``) -----------

class WorkerStacks(NamedTuple):
    """What ``worker_stacks`` returns: one Dask worker process and the pool's tasks in it."""
    address: str
    host: str
    pid: int
    held: dict          # key -> Dask state ("executing", "ready", ...) of the pool's tasks
    stacks: dict        # key -> the Python stack of the thread running it


def worker_stacks(pool: str, dask_worker: Any = None) -> WorkerStacks:
    """The pool's tasks in this worker, and the stack of each one running.

    Run by ``client.run`` in the worker's event-loop thread, not in a task
    thread, so it answers while the tasks are blocked in C (``time.sleep``,
    a lock): it reads their frames (``sys._current_frames``) without
    stopping them.  (A task holding the GIL keeps the loop from answering
    at all: the client then says "no stack".)
    """
    mine = f"-{pool}-"
    frames = sys._current_frames()
    stacks = {key: "".join(traceback.format_stack(frames[ident]))
              for ident, key in list(dask_worker.active_threads.items())
              if isinstance(key, str) and mine in key and ident in frames}
    held = {key: task.state for key, task in list(dask_worker.state.tasks.items())
            if isinstance(key, str) and mine in key and task.state != "memory"}
    return WorkerStacks(dask_worker.address, socket.gethostname(), os.getpid(), held,
                        stacks)


# -- functions, and the initializer's __main__ ----------------------------------

_functions: dict[bytes, Callable] = {}
# pool id -> (the initializer's globals, the names it set): see _shared_main.
_main_namespaces: dict[str, tuple[dict, frozenset]] = {}


def _load_function(job: RemoteChunk) -> Callable:
    fn = _functions.get(job.func)
    if fn is not None:
        return fn
    fn = _serialization.loads(job.func, "function")
    if _serialization.is_by_reference(fn):
        if len(_functions) > 256:
            _functions.clear()
        _functions[job.func] = fn
        return fn
    return _shared_main(job.pool, fn)


def _shared_main(pool: str, fn: Any) -> Any:
    """*fn* rebound to the globals of the pool's initializer, if both came
    by value from the client's ``__main__``: its own globals (the values
    they had when it was pickled) then what the initializer set."""
    namespace = _main_namespaces.get(pool)
    if (namespace is None or type(fn) is not types.FunctionType
            or fn.__module__ != "__main__"):
        return fn
    shared, set_by_initializer = namespace
    for name, value in fn.__globals__.items():
        if name not in set_by_initializer:
            shared[name] = value
    rebound = types.FunctionType(fn.__code__, shared, fn.__name__, fn.__defaults__,
                                 fn.__closure__)
    rebound.__kwdefaults__ = fn.__kwdefaults__
    rebound.__qualname__ = fn.__qualname__
    rebound.__dict__.update(fn.__dict__)
    return rebound


def _unloadable(exc: SerializationError, address: str) -> BaseException:
    error = UnloadableError(f"{exc} (in the Dask worker {address}, pid {os.getpid()}: "
                            f"the module must be importable there too)")
    error.__cause__ = exc.__cause__
    return error


class InitializerPlugin(WorkerPlugin):
    """Runs a pool's initializer in every Dask worker process (a ``WorkerPlugin``).

    Dask calls ``setup`` in each worker when the plugin is registered and
    in each worker that starts later (a nanny's replacement included).
    """

    idempotent = False

    def __init__(self, pool: str, initializer: bytes, initargs: bytes):
        self.pool = pool
        self.initializer = initializer
        self.initargs = initargs

    def setup(self, worker: Any) -> None:
        init = _serialization.loads(self.initializer, "initializer")
        args = _serialization.loads(self.initargs, "initargs")
        by_value_main = (type(init) is types.FunctionType and init.__module__ == "__main__"
                         and not _serialization.is_by_reference(init))
        before = dict(init.__globals__) if by_value_main else {}
        init(*args)
        if by_value_main:
            after = init.__globals__
            changed = frozenset(k for k, v in after.items()
                                if k not in before or before[k] is not v)
            _main_namespaces[self.pool] = (after, changed)

    def teardown(self, worker: Any) -> None:
        _main_namespaces.pop(self.pool, None)


# -- maxtasksperchild -------------------------------------------------------------

_chunks_run: dict[str, int] = {}


def _count_for_maxtasks(worker: Any, job: RemoteChunk) -> None:
    if job.maxtasks is not None:
        _chunks_run[job.pool] = _chunks_run.get(job.pool, 0) + 1


def _retiring(worker: Any, job: RemoteChunk) -> bool:
    """Whether this worker process ran ``maxtasks`` chunks of the pool already.

    Then it runs no more: it closes gracefully (the scheduler moves the
    results it holds first, where another worker can take them) and its
    nanny starts a new one; the client submits the chunk again.  Checked
    when the next chunk starts, not when the last one ends: Dask may have
    started another task on this worker meanwhile, which closing the worker
    would lose.
    """
    if job.maxtasks is None or _chunks_run.get(job.pool, 0) < job.maxtasks:
        return False
    if not _retire_requested.get(job.pool):
        _retire_requested[job.pool] = True
        worker.loop.add_callback(_retire, worker)
    return True


async def _retire(worker: Any) -> None:
    """Close *worker* gracefully and have its nanny start a new one.

    Dask's ``close_gracefully(restart=True)`` first has the scheduler
    remove the worker, then closes it without its nanny.  A heartbeat that
    reaches the scheduler in between is answered "missing", and the worker
    then closes *with* its nanny (``Worker.heartbeat``): the worker was
    gone for good, and the cluster had one worker fewer (seen once in CI:
    "Only 1/2 workers arrived").  So no heartbeat is sent from here on,
    and any close of this worker keeps the nanny, which starts the next.
    """
    worker.periodic_callbacks["heartbeat"].stop()
    close = worker.close

    def close_keeping_the_nanny(*args: Any, **kwargs: Any) -> Any:
        kwargs["nanny"] = False
        return close(*args, **kwargs)

    worker.close = close_keeping_the_nanny
    await worker.close_gracefully(restart=True, reason="polyproc maxtasksperchild")


_retire_requested: dict[str, bool] = {}


def versions() -> dict[str, str]:
    """What must match between the client and the workers (``client.run``)."""
    import cloudpickle
    from importlib.metadata import PackageNotFoundError, version
    try:
        polyproc_version = version("polyproc")
    except PackageNotFoundError:
        polyproc_version = "unknown"
    return {"python": "{}.{}".format(*sys.version_info[:2]), "polyproc": polyproc_version,
            "cloudpickle": cloudpickle.__version__,
            "chunk protocol": str(CHUNK_PROTOCOL)}


# Bumped whenever RemoteChunk or ChunkOutcome change.
CHUNK_PROTOCOL = 2
