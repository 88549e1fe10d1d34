"""Stacks of a cluster pool's tasks: ``DaskBackend.stacks()`` and its hang reports.

A local pool signals its workers (``process/stacks.py``); a Dask worker is
asked with ``client.run``, which runs ``remote.worker_stacks`` in the
worker's event-loop thread.  That thread is not a task thread, so it
answers while the tasks are blocked in C and reads their frames without
stopping them.  Each worker is asked on its own, all at once, each answer
bounded by the caller's timeout: a worker that does not answer (a task
holding the GIL, an overloaded or vanished worker) gets a ``"no stack:"``
text and does not hold up the others.

The texts are keyed by the worker's pid, as a local pool's are; a worker
that did not answer and has never sent an outcome has no known pid and is
keyed by a negative number (-1, -2, ...).
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from . import remote


def ask_workers(client: Any, pool: str, timeout: float) -> dict[str, Any]:
    """``{address: WorkerStacks or the exception}`` for every worker of the cluster.

    Returns within about *timeout* seconds; raises what the scheduler
    raised (or ``TimeoutError``) if it cannot even name its workers.
    """
    return client.sync(_ask_workers, client, pool, timeout, callback_timeout=timeout + 1.0)


async def _ask_workers(client: Any, pool: str, timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    identity = await asyncio.wait_for(client.scheduler.identity(n_workers=-1), timeout)
    addresses = list(identity["workers"])

    async def one(address: str) -> Any:
        try:
            answers = await asyncio.wait_for(
                client.run(remote.worker_stacks, pool, workers=[address], on_error="return",
                           asynchronous=True),
                max(0.05, deadline - loop.time()))
        except (asyncio.TimeoutError, Exception) as exc:
            return exc
        return answers.get(address, KeyError(address))

    return dict(zip(addresses, await asyncio.gather(*map(one, addresses))))


def stacks_texts(answers: dict[str, Any], known_pids: dict[str, int], timeout: float,
                 describe: Callable[[str], str]) -> dict[int, str]:
    """``{pid: text}`` from *answers* (``ask_workers``).

    Each text starts with the worker's address, host and pid, then the
    pool's tasks it holds (``describe(key)`` names a task's chunk), then
    the stack of each one running.  *known_pids*: ``{address: pid}`` of the
    workers seen before, for those that did not answer.
    """
    texts: dict[int, str] = {}
    unknown = 0
    for address, answer in answers.items():
        if isinstance(answer, remote.WorkerStacks):
            texts[answer.pid] = _worker_text(answer, describe)
            continue
        pid = known_pids.get(address)
        if pid is None:
            unknown -= 1
            pid = unknown
        texts[pid] = (f"Dask worker {address} (pid {pid if pid > 0 else 'unknown'})\n"
                      f"{no_stack(answer, timeout)}")
    return texts


def describe_chunk(chunk: Any) -> str:
    """A ``TaskChunk`` in a line: its one task with its arguments, or its range."""
    if chunk.count == 1:
        return chunk.describe_task(0)
    return f"{chunk.func_name} tasks {chunk.start}..{chunk.start + chunk.count - 1}"


def no_stack(error: BaseException, timeout: float) -> str:
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        return (f"no stack: the worker did not answer within {timeout:g} s (a task holding "
                f"the GIL in C, or the worker is overloaded or gone)\n")
    return f"no stack: the worker could not be asked: {error!r}\n"


def _worker_text(answer: remote.WorkerStacks, describe: Callable[[str], str]) -> str:
    lines = [f"Dask worker {answer.address} on host {answer.host} (pid {answer.pid})"]
    if not answer.held:
        lines.append("holds no task of this pool")
    for key, state in answer.held.items():
        verb = "running" if key in answer.stacks else f"holds ({state})"
        lines.append(f"{verb} {describe(key)}")
    text = "".join(line + "\n" for line in lines)
    for key, stack in answer.stacks.items():
        text += f"Thread running {describe(key)} (most recent call last):\n{stack}"
    return text
