"""Tasks for tests/test_progress.py (importable by spawned workers)."""
from __future__ import annotations

import os
import signal
import time

import polyproc

_gate = None


def install_gate(event):
    """The event that ``gated`` tasks wait for (set before a fork pool starts:
    its workers inherit it)."""
    global _gate
    _gate = event
    return event


def gated(x, free_below):
    """x * x; tasks from *free_below* on wait (at most 30 s) for the gate."""
    if x >= free_below:
        _gate.wait(30)
    return x * x


def loop(n, desc=None):
    """Sum of range(n), looping through ``polyproc.progress``."""
    total = 0
    for i in polyproc.progress(range(n), desc=desc):
        total += i
    return total


def loop_generator(n):
    """As ``loop``, over an iterable without a length (no total)."""
    return sum(polyproc.progress((i for i in range(n)), desc=f"gen {n}"))


def slow_loop(n, seconds):
    """A loop of *n* items of *seconds* each: reports while it runs."""
    for _ in polyproc.progress(range(n)):
        time.sleep(seconds)
    return n


def die_in_loop(n, die_at):
    """Loop through ``polyproc.progress``; SIGKILL this worker at item *die_at*."""
    for i in polyproc.progress(range(n)):
        if i == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(10)
    return n


def die_once(x, marker_dir, bad):
    """Task *bad* kills its worker the first time it runs (a marker file
    remembers it), and returns x when run again."""
    if x == bad:
        marker = os.path.join(marker_dir, f"died-{x}")
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(10)
    return x


def sleep_on(x, bad, seconds=30.0):
    """Task *bad* sleeps (to be timed out); the others return x."""
    if x == bad:
        time.sleep(seconds)
    return x


def interrupt_parent_at(x, parent, bad):
    """Task *bad* sends SIGINT (Ctrl-C) to *parent*; it and later tasks then
    sleep, to be cancelled; earlier tasks return x at once."""
    if x == bad:
        os.kill(parent, signal.SIGINT)
    if x >= bad:
        time.sleep(30)
    return x


def loop_with_total(n, total):
    """A loop of *n* items told its *total* (any object ``int()`` takes)."""
    return sum(polyproc.progress(range(n), total=total))
