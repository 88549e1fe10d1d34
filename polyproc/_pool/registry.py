"""Every unfinished result of a pool, and Ctrl-C cancelling the call it belongs to.

The ``SinkRegistry`` knows every unfinished result (sink) of one pool, so
that terminating the pool, or its backend breaking, fails them all instead
of leaving a ``get()`` blocked forever.  A ``KeyboardInterrupt`` while a
call submits or waits for its results *cancels that call*
(``SinkRegistry.cancel``), not the pool: its queued chunks are dropped, the
workers running its tasks are stopped and replaced, its result fails for
any other waiter; the other calls are not touched (see api.py).
"""
from __future__ import annotations

import threading

from .._exceptions import ProcessError
from . import ownership as _ownership
from .instruments import Instruments

__all__ = ["SinkRegistry", "CancelOnInterrupt", "CANCELLED_MESSAGE"]

CANCELLED_MESSAGE = (
    "this call was cancelled: a KeyboardInterrupt (Ctrl-C) interrupted it while "
    "it submitted its tasks or waited for its results, and its unfinished tasks "
    "were stopped.  The pool keeps running: submit the call again to run it.")


class SinkRegistry:
    """Unfinished results of one pool, so that they can all be failed at once."""

    # No lock: set.add/discard are atomic under the GIL, and abort_all
    # swaps the set out in one step.  This runs once per apply_async call.
    def __init__(self):
        self._sinks: set = set()
        self.backend = None
        self.terminated = False
        self.pid = _ownership.pid  # the process that owns the pool
        self.instruments = Instruments()  # the pool's, which its backend fires
        # Thread ident -> the results made so far by the blocking call
        # (map, apply...) that thread is in (see CancelOnInterrupt).
        self.blocking_calls: dict[int, list] = {}

    def register_sink(self, sink) -> None:
        self._sinks.add(sink)
        if self.blocking_calls:
            made = self.blocking_calls.get(threading.get_ident())
            if made is not None:
                made.append(sink)

    def unregister_sink(self, sink) -> None:
        self._sinks.discard(sink)

    def abort_all(self, exc: BaseException) -> None:
        sinks, self._sinks = self._sinks, set()
        for sink in list(sinks):
            sink.abort(exc)

    def cancel(self, sink) -> None:
        """Cancel one call (Ctrl-C): stop its tasks, fail its result; the pool runs on.

        The backend is told first, so that nothing more of the call is
        dispatched; then the result fails (``ProcessError``) for anyone
        else waiting on it.  Deliveries that raced ahead are kept.
        """
        if sink.cancelled:
            return
        sink.cancelled = True
        if self.backend is not None:
            self.backend.cancel(sink)
        sink.abort(ProcessError(CANCELLED_MESSAGE))

    def terminate(self) -> None:
        """Stop the pool now: workers killed, unfinished results failed."""
        self.terminated = True
        if self.backend is not None:
            self.backend.terminate()
        self.abort_all(ProcessError("the pool was terminated before this task finished"))


class CancelOnInterrupt:
    """``with`` around a blocking call (map, starmap, apply), and around
    imap (whose feeder submits before imap returns): Ctrl-C anywhere
    inside it cancels what it submitted.

    The result objects cancel on an interrupt *while waiting*, and
    submission on one *while submitting*; this also covers the instants in
    between (a signal is handled between any two bytecodes).  A result is
    known from the moment it registers, before any of its tasks is
    submitted.
    """

    __slots__ = ("registry", "ident", "outer")

    def __init__(self, registry: SinkRegistry):
        self.registry = registry

    def __enter__(self) -> None:
        self.ident = threading.get_ident()
        self.outer = self.registry.blocking_calls.get(self.ident)
        self.registry.blocking_calls[self.ident] = []

    def __exit__(self, exc_type, exc, tb) -> None:
        calls = self.registry.blocking_calls
        made = calls.pop(self.ident, [])
        if self.outer is not None:
            calls[self.ident] = self.outer
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            for sink in made:
                self.registry.cancel(sink)
