"""The messages a pool's scheduler and its workers exchange.

One small NamedTuple per kind of message (STYLE.md rule 6): the receiver
dispatches on the type, never on a position in a bare tuple.  NamedTuples
because they pickle as compactly as tuples and cost nothing to build on the
hot path.

Scheduler -> worker, over the worker's own duplex pipe:
    Dispatch(...)             run these chunks, in order
    Shutdown()                finish and exit

Worker -> scheduler:
    StacksReady(fd)           (before the initializer runs, if there is one)
                              stack requests are welcome (_backends/process/stacks.py)
    WorkerReady(pid, ...)     started, initializer done, ready for chunks (and
                              for stack requests)
    InitializerFailed(error)  the initializer raised; the worker exits
    Results(...)              the outcomes of chunks that finished
    Retiring(reason)          exits after this message (maxtasksperchild or
                              max_memory_per_child reached); everything it
                              was given and did not report is unstarted
    TaskProgress(...)         a task's ``polyproc.progress`` loop got this far
                              (task_progress.py; throttled in the worker)
"""
from __future__ import annotations

import struct
from typing import NamedTuple


# How a chunk's items become calls (the stdlib's mapstar/starmapstar/apply).
CALL_MAP = 0     # func(item)
CALL_STAR = 1    # func(*item)
CALL_APPLY = 2   # func(*args, **kwds) with item == (args, kwds)


class ChunkJob(NamedTuple):
    """One chunk of tasks as the worker sees it."""
    chunk_id: int
    func: bytes        # pickled callable (cached by the parent when by reference)
    payload: bytes     # serialized list of items (see _transport/serialization.py)
    call: int          # CALL_MAP, CALL_STAR or CALL_APPLY
    tracking: int      # TRACK_NONE, TRACK_INDEX or TRACK_TIME (see below)


# How closely a worker records its progress through a chunk in its slot.
TRACK_NONE = 0   # not per task: tasks so fast that recording would double their cost
TRACK_INDEX = 1  # the index of the task running (blame on death is exact)
TRACK_TIME = 2   # index and start time (the chunk has a timeout)


class Dispatch(NamedTuple):
    """Chunks for a worker to run in order, one list per ChunkJob field.

    Columns rather than a list of ChunkJob records, for the same reason as
    ``Results``: a storm of one-task chunks pays per record.
    """
    chunk_ids: list
    funcs: list
    payloads: list
    calls: list
    trackings: list

    def jobs(self):
        return map(ChunkJob, self.chunk_ids, self.funcs, self.payloads,
                   self.calls, self.trackings)


class Shutdown(NamedTuple):
    reason: str = "pool closed"


class WorkerReady(NamedTuple):
    pid: int
    entered: float = 0.0  # time.monotonic() when worker_main began
    ready: float = 0.0    # ... and when the initializer had run (see instruments.py)
    stacks_fd: int = -1   # its stack dump file's fd there, -1: none (stacks.py)


class StacksReady(NamedTuple):
    """Sent before a long initializer, so that its stack can be asked for."""
    stacks_fd: int  # the stack dump file's fd in the worker (stacks.py)


class InitializerFailed(NamedTuple):
    error: bytes  # exception payload (see _transport/remote_errors.py)


class ChunkDone(NamedTuple):
    """The outcome of every task of one chunk (the worker's own record).

    ``values[i]`` is task i's return value; where task i raised, ``errors[i]``
    holds its exception payload and ``values[i]`` is None.  Errors are sparse
    so that the common case (no errors) costs one empty dict.  An error
    under key -1 means the chunk could not even be loaded: every task
    failed that way.
    """
    chunk_id: int
    values: list
    errors: dict
    seconds: float  # wall time the worker spent loading and running the chunk
    started: float = 0.0       # time.monotonic() when it began loading it
    load_seconds: float = 0.0  # of ``seconds``, unpickling the function and items


class Results(NamedTuple):
    """Several ChunkDone records on the wire, one list per field.

    Columns rather than a list of records: an ``apply_async`` storm sends
    one-task chunks, and a record object per chunk was a third of the cost
    of pickling and unpickling the message.
    """
    chunk_ids: list   # list[int]
    values: list      # list[list]
    errors: dict      # {index in this message: that chunk's errors dict}
    seconds: list     # list[float]
    started: list     # list[float]
    load_seconds: list  # list[float]

    @classmethod
    def of(cls, done: list) -> Results:
        return cls([d.chunk_id for d in done], [d.values for d in done],
                   {i: d.errors for i, d in enumerate(done) if d.errors},
                   [d.seconds for d in done], [d.started for d in done],
                   [d.load_seconds for d in done])


class Retiring(NamedTuple):
    reason: str


class TaskProgress(NamedTuple):
    """A ``polyproc.progress`` loop of the running task has yielded *n* items.

    Sent at the loop's start, at most every ``task_progress.REPORT_SECONDS``
    while it runs, and once more with *closed* when it ends.  *bar* numbers
    the loops of one worker process (a task may run several).
    """
    chunk_id: int       # the chunk whose task runs the loop
    task: int           # that task's index in the chunk (0 if not tracked:
                        # the scheduler knows whether it is, TRACK_*)
    bar: int
    n: int
    total: int | None
    desc: str | None
    closed: bool


# Every worker -> scheduler message is framed: 8 bytes naming the last chunk
# whose results it carries (0 for other messages), the time.monotonic() when
# the worker began pickling it and the seconds that took (for instruments:
# measured around the pickling, so they can only travel outside the pickle),
# then the serialized message.  The frame is read without unpickling anything, so that when a
# Results message cannot be unpickled in the parent (a result whose class
# exists only in the worker, a __reduce__ that fails on load), the scheduler
# still knows which chunks it carried and fails exactly those tasks instead
# of losing track of the worker.
_FRAME = struct.Struct("<qdd")


def frame(last_chunk_id: int, payload: bytes, dump_started: float = 0.0,
          dump_seconds: float = 0.0) -> bytes:
    return _FRAME.pack(last_chunk_id, dump_started, dump_seconds) + payload


def unframe(data: bytes) -> tuple[int, memoryview]:
    return _FRAME.unpack_from(data)[0], memoryview(data)[_FRAME.size:]


def frame_dump_times(data: bytes) -> tuple[float, float]:
    """When the sender began pickling a framed message, and for how long."""
    return _FRAME.unpack_from(data)[1:]


# Phases a worker records in its slot of the pool's shared progress table,
# so that when it dies the scheduler knows what it was doing (see
# _pool/_backends/process/scheduler.py, "Who is to blame when a worker dies").
PHASE_IDLE = 0.0
PHASE_LOADING = 1.0   # unpickling a chunk's items
PHASE_RUNNING = 2.0   # running one task
PHASE_DUMPING = 3.0   # pickling and sending results

# Layout of one worker's slot in the progress table (a RawArray of doubles).
SLOT_PHASE = 0
SLOT_CHUNK = 1    # chunk id being loaded/run, the last one being dumped, or
                  # (IDLE) the last one run, its results not sent yet; -1: none
SLOT_TASK = 2     # index within the chunk of the task running
SLOT_STARTED = 3  # time.monotonic() when that task started
SLOT_WIDTH = 4
