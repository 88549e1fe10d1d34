"""The Backend protocol: what ``Pool`` and ``Executor`` need of the engine that runs their tasks.

The front-ends (``api.Pool``, ``executor.Executor``) turn calls into
``TaskChunk``s (``chunks.py``) and hand them to a backend; the backend runs
them somewhere and hands each chunk's outcomes to the chunk's *sink*
(``Sink``: a Pool's result object, an Executor's future).  That is all the
front-ends know of it: they use nothing but the members below, so a new
engine is one new module under ``_backends/`` and its tests.

Backends are loaded by name on first use (``load``), as anyio loads its
event-loop backends: ``"process"`` (``_backends/process/``, local worker
processes run by the ``ProcessScheduler`` thread) and ``"thread"``
(``_backends/thread.py``, worker threads, for ``ThreadPool``) and
``"dask"`` (``_backends/dask/``, a Dask cluster, for ``Pool(cluster=...)``).
A backend that is never used is never imported: the Dask backend costs
nothing to programs that do not pass ``cluster=``.

Each backend module exposes ``backend_class``, built as
``backend_class(options, context, abort_all, instruments)``: the
``WorkerOptions`` of the pool, the context to start processes with (ignored
by backends without local processes), the front-end's call that fails every
unfinished result at once (the backend broke or was terminated), and the
pool's ``Instruments`` (instruments.py), whose events the backend fires.

Life cycle (``RUN`` -> ``CLOSE`` -> ``TERMINATE``, the stdlib Pool's state
names): ``close()`` runs what was submitted, then stops the workers;
``terminate()`` stops them now; ``join()`` waits for them to be gone.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .chunks import TaskChunk, Transport

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from .instruments import Instruments
    from .options import WorkerOptions

__all__ = ["Backend", "Sink", "Transport", "load", "available", "RUN", "CLOSE",
           "TERMINATE"]

# The states of a pool and of its backend (the stdlib Pool's names, which
# ``polyproc.pool`` re-exports for code that reads them).
RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"


class Sink(Protocol):
    """Where a chunk's outcomes go (``chunk.sink``): one call's result."""

    #: Set by the front-end when the call was cancelled (Ctrl-C): its
    #: queued chunks need not run.
    cancelled: bool

    def deliver(self, start: int, values: list, errors: dict[int, BaseException]) -> None:
        """Outcomes of the tasks at positions ``start ...`` of the call:
        ``values[i]``, or the exception ``errors[i]`` for those that failed.
        Called from the backend's thread; must not block."""

    def abort(self, exc: BaseException) -> None:
        """Nothing more will come: every task not delivered fails with *exc*."""


class Backend(Protocol):
    """An engine that runs chunks of tasks on some workers."""

    #: The number of workers.
    size: int
    #: How task functions and arguments must reach the workers.
    transport: Transport
    #: Why the backend can run nothing more (it broke: an initializer
    #: failed, workers cannot start), or None.
    broken: BaseException | None

    def submit(self, chunks: list[TaskChunk]) -> None:
        """Queue *chunks* (never blocks); each one's outcomes go to
        ``chunk.sink``, exactly once per task, from the backend's thread.
        Once broken, fails them with ``broken`` instead."""

    def task_seconds(self, func: Any) -> float | None:
        """The measured mean seconds per task of *func* (as chunks carry
        it), or None if not known yet: what chunk sizes are chosen from."""

    def add_feeder(self) -> None:
        """A thread (an ``imap`` feeder) will submit more: ``close()`` must
        not stop the workers before ``remove_feeder()``."""

    def remove_feeder(self) -> None:
        """A feeder added by ``add_feeder()`` has submitted all it will."""

    def cancel(self, sink: Sink) -> None:
        """Stop running the chunks of *sink*'s call (never blocks): drop the
        queued ones, stop the tasks running if the workers can be stopped."""

    def worker_processes(self) -> list[BaseProcess]:
        """The worker processes on this machine now (empty for backends
        without local processes: threads, a cluster)."""

    def stacks(self, timeout: float = 1.0) -> dict[int, str]:
        """What each worker is running now: ``{id: text}``, the tasks it holds
        and its Python stack, for every worker on this machine (a process:
        its pid; a thread: its native thread id).  Returns within about
        *timeout* seconds, even while tasks are blocked in C; a worker that
        cannot answer gets a text that says why.  Empty for workers this
        process cannot see (a cluster)."""

    def close(self) -> None:
        """Run what was submitted (and what feeders still submit), then stop
        the workers.  Never blocks."""

    def terminate(self, kill: bool = False) -> None:
        """Stop every worker now (SIGTERM, SIGKILL after a grace period;
        *kill*: SIGKILL at once) and fail what they held.  Returns once the
        workers are gone (threads: once they finished their current task)."""

    def join(self, timeout: float | None = None) -> None:
        """Wait until the workers are gone, or *timeout* seconds."""


AbortAll = Callable[[BaseException], None]


def load(name: str) -> Callable[[WorkerOptions, Any, AbortAll, Instruments], Backend]:
    """The class of backend *name*, importing its module on first use.

    Raises ``ValueError`` naming the backends there are if there is none
    of that name.
    """
    module_name = f"{__package__}._backends.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise  # the backend exists, but something it imports does not
        raise ValueError(f"no pool backend named {name!r}; the backends are "
                         f"{', '.join(map(repr, available()))}") from None
    return module.backend_class


def available() -> list[str]:
    """The names of the backends (without importing them)."""
    import pkgutil
    package = importlib.import_module(f"{__package__}._backends")
    return sorted(info.name for info in pkgutil.iter_modules(package.__path__))
