"""How long each function's tasks take: what the scheduler sizes batches and chunks from.

Workers measure each chunk (``Results.seconds``); the scheduler folds the
measurements into a moving average of seconds per task for each function,
keyed by its pickled bytes (``timing_key``).  A function not measured yet
has no entry: its first chunk goes alone (see ``_send_dispatch``).
"""
from __future__ import annotations

__all__ = ["TaskTimes", "timing_key", "MAX_TIMED_FUNCS", "MAX_TIMING_KEY_BYTES"]

MAX_TIMED_FUNCS = 1024         # functions whose task times are remembered
MAX_TIMING_KEY_BYTES = 4096    # larger pickled functions are keyed by a hash


def timing_key(func: bytes) -> bytes | tuple[int, int]:
    """The key of a pickled function in the table of task times.

    The bytes themselves when small (by-reference pickles: a few dozen
    bytes), else their length and hash: a closure pickled by value can
    carry megabytes of captured data, which the table must not keep for
    the pool's lifetime.  ``hash()`` of a bytes object is computed once and
    cached in it, and the chunks of one call share one bytes object, so
    this costs nothing per lookup; a collision would only mix up two
    functions' time estimates.
    """
    if len(func) <= MAX_TIMING_KEY_BYTES:
        return func
    return (len(func), hash(func))


class TaskTimes:
    """Mean seconds per task of each function (by its pickled bytes).

    Read and written by the scheduler's thread only; ``get`` may be read
    from caller threads (a dict lookup, atomic under the GIL).
    """

    def __init__(self) -> None:
        self.by_key: dict[bytes | tuple[int, int], float] = {}

    def get(self, func: bytes) -> float | None:
        """The mean seconds per task of *func*, or None if not measured yet."""
        return self.by_key.get(timing_key(func))

    def learn(self, func: bytes, seconds: float, tasks: int) -> None:
        """Fold a measurement into *func*'s moving average of seconds per task."""
        per_task = seconds / tasks
        timings = self.by_key
        key = timing_key(func)
        known = timings.get(key)
        if known is None:
            if len(timings) > MAX_TIMED_FUNCS:
                timings.clear()
            timings[key] = per_task
        else:
            timings[key] = known + 0.3 * (per_task - known)
