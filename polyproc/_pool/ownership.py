"""Pools and Executors belong to the process that made them.

``os.fork()`` (or a ``Process`` under the fork start method) gives the
child a copy of every Pool and Executor of its parent: the objects, their
queues of work, the file descriptors of their pipes.  It does not give it
their scheduler thread (fork copies only the thread that called it), and
their workers stay the parent's children.  A call in the child would queue
work that nothing runs and wait for ever; so every pool records the pid of
the process that made it, and every call, and every wait on an unfinished
result, compares it with this process's (``check_owner``): in a child they
raise ``InheritedPoolError`` at once.

Cleaning up an inherited pool in the child (``close``, ``terminate``,
``join``, ``shutdown``, garbage collection) must leave the parent's pool
alone: those only mark the child's copy as closed.  The pool's
``multiprocessing.util.Finalize`` already does nothing in another process
(it records its pid too).

One more trap, in the stdlib: ``multiprocessing.util._exit_function`` (an
``atexit`` hook) terminates and joins every daemon process listed in
``multiprocessing.process._children``.  A child made by ``Process``
empties that set first thing (``BaseProcess._bootstrap``); a child made by
a bare ``os.fork()`` does not, so when it exits normally it SIGTERMs its
parent's pool workers (and then fails an assertion joining them).  The
fork hook below drops the inherited entries, as ``_bootstrap`` does: a
forked child is never the parent of its parent's children.

This process's pid is kept in a module global that the same fork hook
updates (``os.getpid()`` is a system call, and ``apply_async`` checks it
on every call), as ``client.pid`` is.
"""
from __future__ import annotations

import os
from multiprocessing import process as _mp_process

from .._exceptions import InheritedPoolError

__all__ = ["check_owner", "pid"]

pid = os.getpid()


def check_owner(owner_pid: int, what: str) -> None:
    """Raise ``InheritedPoolError`` unless this process is *owner_pid*.

    *what* names the object for the message ("this Pool", "this
    Executor's future"...).
    """
    if owner_pid != pid:
        raise InheritedPoolError(
            f"{what} was created in process {owner_pid}, and this is process "
            f"{pid}, a child made by fork that inherited a copy of it: its "
            f"scheduler thread and worker processes belong to the parent, so "
            f"nothing here would ever run or finish the call.  Create the Pool "
            f"(or Executor) in the child, or pass the work back to the parent "
            f"(return it from the task or Process, or send it through a Queue).")


def _after_fork_in_child() -> None:
    global pid
    pid = os.getpid()
    # Rebound by _bootstrap: looked up now, not at import.
    children = _mp_process._children  # type: ignore[attr-defined]
    for child in list(children):
        if child._parent_pid != pid:
            children.discard(child)


os.register_at_fork(after_in_child=_after_fork_in_child)
