"""Pause polyproc's own threads around a fork, so that it forks a single-threaded process.

Why.  A child forked from a multi-threaded process inherits every lock as
it was at the fork; one that another thread held stays held for ever in
the child (Python 3.12+ warns: ``This process is multi-threaded, use of
fork() may lead to deadlocks in the child``).  Under the fork start method
polyproc forks from the caller's thread at ``Pool()``, ``Executor()`` and
``Process.start()``, as the stdlib does.  Often the only other threads
alive then are polyproc's own: the ``PoolScheduler`` thread of each pool
or executor the program already holds.  Those threads keep all their state
in their scheduler object, and their loop has a point where that state is
whole (the top of the loop), so they can end there and be started again:
no lock of theirs is held, and no thread of theirs exists, while the fork
runs.  The fork then happens in a single-threaded process, as if the
program had made that pool first.

What it does not cover.  A thread polyproc cannot end and restart (the
program's own, a ``ThreadPool``'s, a library's, a Dask client's) stays:
then nothing is paused, the fork happens as the stdlib's would, and
Python's warning, which is about the program's own threads, stands
(docs/pool.md, "Which forks can see other threads").  A scheduler busy for longer
than ``PAUSE_TIMEOUT_SECONDS`` (a long callback of the program's runs on
it; a closing pool waits for its workers) is not waited for either.

The protocol (``PausableThread``): ``request_pause()`` never blocks; the
thread ends at its next safe point; ``wait_paused(timeout)`` waits for
that; ``resume()`` cancels a request not yet acted on, or starts the
thread again.  A thread that ended for good meanwhile (its pool was done)
is not started again.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import weakref
from typing import Iterator, Protocol

__all__ = ["PausableThread", "register", "own_threads_paused", "join_os_thread",
           "PAUSE_TIMEOUT_SECONDS"]

# How long a fork waits for polyproc's threads to reach their safe point:
# a PoolScheduler at rest wakes in microseconds.
PAUSE_TIMEOUT_SECONDS = 0.2


class PausableThread(Protocol):
    """An object that runs one thread which can end at a safe point and restart."""

    def running_thread(self) -> threading.Thread | None:
        """The thread now running for this object, or None."""

    def request_pause(self) -> None:
        """Ask the thread to end at its next safe point; never blocks."""

    def wait_paused(self, timeout: float) -> bool:
        """Wait up to *timeout* s for the thread to end; True once it has."""

    def resume(self) -> None:
        """Cancel the request, or start the thread again if it paused."""


_registry: weakref.WeakSet = weakref.WeakSet()
_lock = threading.RLock()   # one pause at a time; re-entered by nested forks
_depth = 0                  # 1 inside the body of own_threads_paused (thread holding _lock)
_pausing: int | None = None  # that thread's ident while owners are paused


# How long join_os_thread waits for an ended thread's system thread to go:
# microseconds, normally.
OS_EXIT_WAIT_SECONDS = 0.05


def join_os_thread(thread: threading.Thread, timeout: float | None = None) -> None:
    """``thread.join(timeout)``; once the thread has ended, also wait (at
    most ``OS_EXIT_WAIT_SECONDS``) until its system thread is gone.

    Why: on Python 3.12 ``join()`` returns once the thread's Python part
    has ended, and its system thread exits a moment later.  A fork in that
    moment counts it: Python 3.12+ warns that the process is
    multi-threaded (it reads the count of the system's threads), and the
    child is forked beside a thread that may still hold a C library lock.
    ``/proc/self/task`` lists this process's system threads (Linux); where
    it is absent, this is ``join()``.
    """
    thread.join(timeout)
    native_id = thread.native_id
    if thread.is_alive() or native_id is None:
        return
    task = f"/proc/self/task/{native_id}"
    deadline = time.monotonic() + OS_EXIT_WAIT_SECONDS
    while os.path.exists(task) and time.monotonic() < deadline:
        time.sleep(0.0001)


def register(owner: PausableThread) -> None:
    """Let forks in this process pause *owner*'s thread (held weakly)."""
    with _lock:
        _registry.add(owner)


def pausing_in_this_thread() -> bool:
    """True in the thread whose fork has paused owners, until it resumes
    them: a wait there for a paused thread to end would never end (a
    pool's finalizer, run by the garbage collector during the fork)."""
    return _pausing == threading.get_ident()


@contextlib.contextmanager
def own_threads_paused() -> Iterator[None]:
    """Run the body (a fork) with polyproc's own threads paused, when they
    are this process's only other threads; otherwise run it as it is.

    Blocks up to ``PAUSE_TIMEOUT_SECONDS`` for the threads to pause, and
    while another thread's pause runs.  Re-entrant: a nested call runs its
    body at once.
    """
    global _depth
    with _lock:
        if _depth:
            yield
            return
        owners = _owners_to_pause()
        try:
            _depth = 1  # the forks nested in the body do not look again
            if owners:
                _pause(owners)
            yield
        finally:
            _depth = 0
            if owners:
                _resume(owners)


def _pause(owners: list[PausableThread]) -> None:
    """Ask each owner to pause, then wait for them (bounded).  Ctrl-C
    cannot land between the requests: an owner asked and never resumed
    would stop its pool for good."""
    global _pausing
    with _sigint_deferred():
        _pausing = threading.get_ident()
        for owner in owners:
            owner.request_pause()
    deadline = time.monotonic() + PAUSE_TIMEOUT_SECONDS
    for owner in owners:
        owner.wait_paused(max(0.0, deadline - time.monotonic()))


def _resume(owners: list[PausableThread]) -> None:
    """Resume every owner, even when a Ctrl-C came meanwhile: it is raised
    once they all run again."""
    global _pausing
    interrupted = None
    with _sigint_deferred(raise_pending=False):
        try:
            _let_pending_signals_run()
        except KeyboardInterrupt as exc:
            interrupted = exc
        for owner in owners:
            owner.resume()
        _pausing = None
    if interrupted is not None:
        raise interrupted


@contextlib.contextmanager
def _sigint_deferred(raise_pending: bool = True) -> Iterator[None]:
    """SIGINT blocked meanwhile (a Ctrl-C waits, it is not lost); one that
    arrived before is raised at the start (*raise_pending*), before
    anything changed.  Not around the fork itself: a child inherits the
    signal mask."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        if raise_pending:
            _let_pending_signals_run()
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _let_pending_signals_run() -> None:
    # A Python function call: the interpreter runs the handlers of signals
    # already received (KeyboardInterrupt for SIGINT) at its start.
    pass


def _owners_to_pause() -> list[PausableThread]:
    """The registered owners whose threads are all the other threads now,
    or none: pausing only some would leave the process multi-threaded at
    the fork, for a cost and no gain."""
    current = threading.current_thread()
    others = {t for t in threading.enumerate() if t is not current}
    if not others:
        return []
    owners = {}
    for owner in list(_registry):
        thread = owner.running_thread()
        if thread is current:  # a fork from a scheduler's own thread (a callback)
            return []
        if thread is not None:
            owners[thread] = owner
    if not others <= owners.keys():
        return []
    return [owners[t] for t in others]


def _after_fork_in_child() -> None:
    # The forking thread held _lock: a child starts with a fresh one, and
    # with no owner (their threads are not in the child).
    global _lock, _depth, _pausing
    _lock = threading.RLock()
    _depth = 0
    _pausing = None
    _registry.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
