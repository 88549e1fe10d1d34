"""What a pool's workers are made with, checked once for ``Pool`` and ``Executor``.

``Pool(processes, initializer, initargs, maxtasksperchild,
max_memory_per_child=)`` and ``Executor(max_workers, ..., initializer,
initargs, max_tasks_per_child=, max_memory_per_child=)`` say the same
things with the stdlib's two spellings; both become one ``WorkerOptions``,
which is what a backend is built from.  The checks are shared; where the
stdlib's ``multiprocessing.pool.Pool`` and ``ProcessPoolExecutor`` raise
different errors for the same mistake (a worker count below one, a bad
``max_tasks_per_child``), each constructor keeps its own, word for word, and
in the stdlib's order of checks.

The per-call options (``timeout=``, ``retries=``, ``buffersize=``) are
checked here too, with the same errors for both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .._cpu import process_cpu_count
from .._process.child import refuse_start_while_importing_main
from .._process.process import current_process

__all__ = ["WorkerOptions", "check_task_options", "check_buffersize",
           "check_callable", "check_hang_report"]


@dataclass(frozen=True)
class WorkerOptions:
    """The workers of one pool or executor: how many, and how each is run.

    ``max_tasks``: chunks a worker runs before it is replaced (the
    stdlib's ``maxtasksperchild``/``max_tasks_per_child``), or None;
    ``max_memory``: bytes of resident memory after which a worker is
    replaced before its next task, or None; ``hang_report``: seconds
    without a finished task, while tasks are outstanding, after which the
    workers' stacks are written to stderr, or None;
    ``cluster``: the Dask cluster
    to run on (an address, a ``distributed.Client`` or ``"local"``), or
    None for local workers.  With a cluster, ``workers`` 0 means the
    cluster's total threads (the backend counts them).
    """

    workers: int
    initializer: Callable[..., Any] | None = None
    initargs: tuple = ()
    max_tasks: int | None = None
    max_memory: int | None = None
    hang_report: float | None = None
    cluster: Any = None

    @classmethod
    def for_pool(cls, processes: int | None, initializer: Callable[..., Any] | None,
                 initargs: Iterable, maxtasksperchild: int | None,
                 max_memory_per_child: int | None, cluster: Any = None) -> WorkerOptions:
        """``multiprocessing.pool.Pool``'s arguments, with its errors.

        Raises ``ValueError`` for fewer than one process, a
        ``maxtasksperchild`` that is not a positive int, or a
        ``max_memory_per_child`` that is not positive; ``TypeError`` for
        an initializer that is not callable.  In a process that is
        importing the main module (spawn, forkserver) it exits with the
        message that explains the ``__main__`` guard.
        """
        _refuse_while_importing_main()
        if processes is None:
            processes = default_workers() if cluster is None else 0
        elif processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        _check_initializer(initializer)
        _check_max_memory(max_memory_per_child)
        return cls(processes, initializer, tuple(initargs), maxtasksperchild,
                   max_memory_per_child, cluster=cluster)

    @classmethod
    def for_executor(cls, max_workers: int | None,
                     initializer: Callable[..., Any] | None, initargs: Iterable,
                     max_tasks_per_child: int | None,
                     max_memory_per_child: int | None,
                     cluster: Any = None) -> WorkerOptions:
        """``ProcessPoolExecutor``'s arguments, with its errors.

        Raises ``ValueError`` for ``max_workers`` below one, a
        ``max_tasks_per_child`` below one or a ``max_memory_per_child``
        that is not positive; ``TypeError`` for an initializer that is not
        callable or a ``max_tasks_per_child`` that is not an int.  In a
        process importing the main module, as ``for_pool``.
        """
        _refuse_while_importing_main()
        if max_workers is None:
            max_workers = default_workers() if cluster is None else 0
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        _check_initializer(initializer)
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        _check_max_memory(max_memory_per_child)
        return cls(max_workers, initializer, tuple(initargs), max_tasks_per_child,
                   max_memory_per_child, cluster=cluster)


def default_workers() -> int:
    """The default number of workers: the CPUs this process may use.

    As the stdlib from 3.13 (``os.process_cpu_count``), on every Python,
    and capped by a container's CPU quota (see ``_cpu``).
    """
    return process_cpu_count() or 1


def _refuse_while_importing_main() -> None:
    if getattr(current_process(), "_inheriting", False):
        refuse_start_while_importing_main()


def _check_initializer(initializer: Callable[..., Any] | None) -> None:
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")


def _check_max_memory(max_memory_per_child: int | None) -> None:
    if max_memory_per_child is not None and max_memory_per_child <= 0:
        raise ValueError("max_memory_per_child must be a positive number of bytes or None")


def check_task_options(timeout: float | None, retries: int) -> None:
    """``timeout=`` and ``retries=`` of a call: ``ValueError`` unless a
    positive number of seconds (or None) and an int >= 0."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, not {retries!r}")


def check_buffersize(buffersize: int | None) -> None:
    """``buffersize=`` of ``imap`` and ``Executor.map`` (the stdlib's checks):
    ``TypeError`` unless an int or None, ``ValueError`` if below 1."""
    if buffersize is not None and not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")


def check_callable(func: Callable[..., Any]) -> None:
    """``TypeError`` naming *func* unless it is callable."""
    if not callable(func):
        raise TypeError(f"{func!r} is not callable")


def check_hang_report(hang_report: float | None) -> float | None:
    """``hang_report=`` of ``Pool`` and ``Executor``: ``TypeError`` unless a
    number or None, ``ValueError`` unless positive; returns it as a float."""
    if hang_report is None:
        return None
    if isinstance(hang_report, bool) or not isinstance(hang_report, (int, float)):
        raise TypeError(f"hang_report must be a number of seconds or None, "
                        f"not {hang_report!r}")
    if not hang_report > 0:
        raise ValueError(f"hang_report must be a positive number of seconds or None, "
                         f"not {hang_report!r}")
    return float(hang_report)
