"""Progress bars (polyproc/_pool/progress.py, task_progress.py): what they count,
under worker loss, retries, timeouts and Ctrl-C, and the nested bars of a
task's own ``polyproc.progress`` loops, drawn in the parent.

The bars are observed, not replaced: the ``bars`` fixture records every
tqdm bar polyproc makes (``_progress_bar_class`` gives a subclass that
keeps a list), so a test reads each bar's final ``n``, ``total`` and
whether it was closed (tqdm's ``disable`` is set by ``close()``).
"""
from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import polyproc
from polyproc import TaskTimeoutError, WorkerLostError
from polyproc._pool import progress as progress_module
from polyproc.pool import ThreadPool

import _pool_helpers
import _progress_helpers as h

FORK = polyproc.get_context("fork")
SCRIPTS = Path(__file__).parent / "scripts"
TESTS = Path(__file__).parent


@pytest.fixture
def bars(monkeypatch):
    """Every tqdm bar polyproc makes during the test, in order."""
    made: list = []
    base = progress_module._progress_bar_class()

    class Recording(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(progress_module, "_progress_bar_class", lambda: Recording)
    return made


def call_bars(bars) -> list:
    """The bars of calls (``progress=True``), which count tasks."""
    return [b for b in bars if b.unit == "task"]


def nested_bars(bars) -> list:
    """The bars of the tasks' own loops."""
    return [b for b in bars if b.unit != "task"]


class Reports(polyproc.Instrument):
    """Records the ``task_progress`` events: what the scheduler received."""

    def __init__(self):
        self.reports: list = []
        self.first = threading.Event()

    def task_progress(self, info):
        self.reports.append(info)
        self.first.set()


# -- what a call's bar counts, for each method -------------------------------------

ITEMS = list(range(6))
SQUARES = [x * x for x in ITEMS]


def _pool_call(kind: str, pool):
    if kind == "map":
        return pool.map(_pool_helpers.square, ITEMS, chunksize=1, progress=True)
    if kind == "map_async":
        return pool.map_async(_pool_helpers.square, ITEMS, 2, progress=True).get(30)
    if kind == "starmap":
        return pool.starmap(pow, [(x, 2) for x in ITEMS], progress=True)
    if kind == "starmap_async":
        return pool.starmap_async(pow, [(x, 2) for x in ITEMS], progress=True).get(30)
    if kind == "imap":
        return list(pool.imap(_pool_helpers.square, ITEMS, progress=True))
    if kind == "imap_unordered":
        return sorted(pool.imap_unordered(_pool_helpers.square, ITEMS, progress=True))
    if kind == "imap_generator":  # no length: read as results are consumed
        return list(pool.imap(_pool_helpers.square, iter(ITEMS), buffersize=2,
                              progress=True))
    if kind == "imap_unordered_generator":
        return sorted(pool.imap_unordered(_pool_helpers.square, (x for x in ITEMS),
                                          progress=True))
    raise AssertionError(kind)


SIZED = r"6/6 \[\d\d:\d\d<\d\d:\d\d, "      # a total: count/total [elapsed<ETA, rate]
UNSIZED = r"\d+task \[\d\d:\d\d, [^\]]*task/s\]"   # none yet: count [elapsed, rate]


@pytest.mark.parametrize("kind", ["map", "map_async", "starmap", "starmap_async", "imap",
                                  "imap_unordered", "imap_generator",
                                  "imap_unordered_generator"])
def test_pool_bar_counts_every_task_with_total_and_eta(kind, bars, capfd):
    with FORK.Pool(2) as pool:
        assert _pool_call(kind, pool) == SQUARES
        assert not pool._registry.instruments  # the bar detached when the call ended
    [bar] = call_bars(bars)
    assert (bar.n, bar.total, bar.disable) == (6, 6, True)
    err = capfd.readouterr().err
    assert re.search(SIZED, err), err  # the last line: the total and an ETA
    if kind == "imap_generator":
        # Until the input was all read, a rate instead of an unknown total.
        assert re.search(UNSIZED, err), err


@pytest.mark.parametrize("buffersize", [None, 2])
def test_executor_map_bar_counts_every_call(buffersize, bars, capfd):
    with FORK.Executor(2) as executor:
        results = executor.map(_pool_helpers.square, ITEMS, buffersize=buffersize,
                               progress=True)
        assert list(results) == SQUARES
        assert not executor._instruments  # closed with the iterator
    [bar] = call_bars(bars)
    assert bar.disable
    err = capfd.readouterr().err
    if buffersize is None:
        assert (bar.n, bar.total) == (6, 6)
        assert re.search(SIZED, err), err
    else:  # the input is read as results are consumed: no total, a rate
        assert (bar.n, bar.total) == (6, None)
        assert re.search(r"6task \[\d\d:\d\d, [^\]]*task/s\]", err), err


def test_executor_map_bar_closes_when_every_call_is_counted(bars):
    # Even if its iterator is never consumed.
    with FORK.Executor(2) as executor:
        results = executor.map(_pool_helpers.square, ITEMS, progress=True)
    # shutdown(wait=True) returned: every call completed, after it was counted.
    [bar] = call_bars(bars)
    assert (bar.n, bar.total, bar.disable) == (6, 6, True)
    assert not executor._instruments
    assert list(results) == SQUARES


def test_executor_map_bar_counts_calls_that_cannot_be_pickled(bars):
    # Such a call fails at submission, unseen by the scheduler: counted there.
    with FORK.Executor(2) as executor:
        results = executor.map(_pool_helpers.square, [1, 3, threading.Lock()],
                               progress=True)
        assert [next(results), next(results)] == [1, 9]
        [bar] = call_bars(bars)
        assert (bar.n, bar.total) == (3, 3)
        with pytest.raises(TypeError):
            next(results)
    assert bar.disable


def test_bar_counts_completed_tasks_not_submitted_ones(bars):
    gate = h.install_gate(FORK.Event())  # inherited by the forked workers
    with FORK.Pool(2) as pool:
        results = pool.imap(functools.partial(h.gated, free_below=2), ITEMS, chunksize=1,
                            progress=True)
        assert [next(results), next(results)] == [0, 1]
        [bar] = call_bars(bars)
        assert (bar.n, bar.total) == (2, 6)  # all six submitted, two completed
        gate.set()
        assert list(results) == SQUARES[2:]
    assert (bar.n, bar.disable) == (6, True)


def test_executor_bar_counts_completed_calls_not_submitted_ones(bars):
    gate = h.install_gate(FORK.Event())
    with FORK.Executor(2) as executor:
        results = executor.map(functools.partial(h.gated, free_below=2), ITEMS,
                               progress=True)
        assert [next(results), next(results)] == [0, 1]
        [bar] = call_bars(bars)
        assert (bar.n, bar.total) == (2, 6)
        gate.set()
        assert list(results) == SQUARES[2:]
    assert (bar.n, bar.disable) == (6, True)


# -- worker loss, retries, timeouts, Ctrl-C -------------------------------------------

def test_bar_counts_the_task_that_killed_its_worker_once(bars, tmp_path):
    with FORK.Pool(2) as pool:
        task = functools.partial(h.die_once, marker_dir=str(tmp_path), bad=3)
        with pytest.raises(WorkerLostError):
            pool.map(task, range(10), chunksize=2, progress=True)
    [bar] = call_bars(bars)
    # The other task of the lost chunk ran again on another worker: counted
    # once, when it completed; the blamed task once, as failed.
    assert (bar.n, bar.total, bar.disable) == (10, 10, True)


@pytest.mark.parametrize("executor", [False, True])
def test_bar_counts_a_retried_task_once(executor, bars, tmp_path):
    task = functools.partial(h.die_once, marker_dir=str(tmp_path), bad=3)
    if executor:
        with FORK.Executor(2) as ex:
            assert list(ex.options(retries=1).map(task, range(10), chunksize=2,
                                                  progress=True)) == list(range(10))
    else:
        with FORK.Pool(2) as pool:
            assert pool.map(task, range(10), chunksize=2, retries=1,
                            progress=True) == list(range(10))
    assert (tmp_path / "died-3").exists()  # it did die once
    [bar] = call_bars(bars)
    assert (bar.n, bar.total, bar.disable) == (10, 10, True)


def test_bar_counts_a_timed_out_task_once(bars):
    with FORK.Pool(2) as pool, pytest.raises(TaskTimeoutError):
        pool.map(functools.partial(h.sleep_on, bad=2), range(6), chunksize=1,
                 timeout=0.5, progress=True)
    [bar] = call_bars(bars)
    assert (bar.n, bar.total, bar.disable) == (6, 6, True)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_ctrl_c_closes_the_bar_at_the_count_completed(method):
    # A terminal's Ctrl-C reaches the whole process group.  Tasks 0-3
    # complete at once, later ones never: the bar may not count beyond 4.
    env = dict(os.environ, COLUMNS="100", PYTHONPATH=os.pathsep.join(
        [str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "progress_ctrl_c.py"), method],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    try:
        assert proc.stdout.readline() == "task started\n"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # (The other worker's "task started" may come before or after it.)
    [state] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert state["closed"] and state["all_closed"] and state["total"] == 10
    assert state["n"] <= 4, state
    drawn, _, _ = err.partition("<<after>>")
    # The terminal is left clean: the bar's last line is finished, and it
    # shows the count the bar holds.
    assert drawn.endswith("\n"), repr(drawn[-200:])
    last = drawn.rstrip("\n").split("\r")[-1]
    assert f"{state['n']}/10 " in last, repr(last)


# -- a task's own loops: nested bars in the parent --------------------------------------

def test_a_tasks_loops_are_nested_bars_in_the_parent(ctx, bars):
    reports = Reports()
    with ctx.Pool(2, instruments=[reports]) as pool:
        assert pool.map(h.loop, [5, 7, 0], chunksize=1, progress=True) == [10, 21, 0]
    [main] = call_bars(bars)
    assert (main.n, main.disable) == (3, True)
    nested = nested_bars(bars)
    # One bar per loop, each at its loop's length, each closed.
    assert sorted((b.n, b.total) for b in nested) == [(0, 0), (5, 5), (7, 7)]
    assert all(b.disable for b in nested)
    assert all(b.pos != main.pos for b in nested)  # below the call's bar
    # What came from the workers: an opening and a closing report per loop.
    assert sorted(r.n for r in reports.reports if r.closed) == [0, 5, 7]
    # Each labelled with its task's position in the map.
    assert sorted((r.position, r.n) for r in reports.reports if r.closed) == \
        [(0, 5), (1, 7), (2, 0)]
    assert sorted(b.desc for b in nested) == ["task 0", "task 1", "task 2"]
    assert os.getpid() not in {r.pid for r in reports.reports}  # the workers'


def test_nested_bars_under_executor_map(bars):
    with FORK.Executor(2) as executor:
        assert list(executor.map(h.loop, [3, 4], progress=True)) == [3, 6]
    nested = nested_bars(bars)
    assert sorted(b.n for b in nested) == [3, 4] and all(b.disable for b in nested)
    assert sorted(b.desc for b in nested) == ["task 0", "task 1"]


def test_nested_bar_of_a_loop_without_length_has_no_total(bars):
    with FORK.Pool(2) as pool:
        assert pool.map(h.loop_generator, [4], progress=True) == [6]
    [nested] = nested_bars(bars)
    assert (nested.n, nested.total, nested.desc, nested.disable) == (4, None, "gen 4", True)


def test_nested_bar_total_of_a_class_the_parent_may_not_have(bars):
    # A numpy integer as total travels as a plain int (the report must
    # unpickle in the parent whatever the task passed).
    numpy = pytest.importorskip("numpy")
    with FORK.Pool(1) as pool:
        assert pool.map(functools.partial(h.loop_with_total, total=numpy.int64(3)), [3],
                        progress=True) == [3]
    [nested] = nested_bars(bars)
    assert (nested.n, nested.total, type(nested.total)) == (3, 3, int)


def test_nested_bar_reports_while_the_loop_runs(bars):
    reports = Reports()
    with FORK.Pool(1, instruments=[reports]) as pool:
        assert pool.map(functools.partial(h.slow_loop, seconds=0.05), [6],
                        progress=True) == [6]
    # Throttled updates between the opening and the closing one.
    assert any(0 < r.n < 6 and not r.closed for r in reports.reports), reports.reports
    [nested] = nested_bars(bars)
    assert (nested.n, nested.disable) == (6, True)


def test_reports_of_a_fast_loop_are_throttled(bars):
    reports = Reports()
    with FORK.Pool(1, instruments=[reports]) as pool:
        assert pool.map(h.loop, [20_000], progress=True) == [sum(range(20_000))]
    # Its opening, its closing, and one per 0.1 s at most in between (the
    # loop takes a few milliseconds): not one per item.
    assert len(reports.reports) <= 10, len(reports.reports)
    assert (reports.reports[0].n, reports.reports[-1].n) == (0, 20_000)
    assert reports.reports[-1].closed


def test_nested_bar_closes_when_its_worker_dies(ctx, bars):
    with ctx.Pool(2) as pool, pytest.raises(WorkerLostError):
        pool.map(functools.partial(h.die_in_loop, die_at=2), [5], progress=True)
    [main] = call_bars(bars)
    [nested] = nested_bars(bars)  # opened by the loop's first report
    assert nested.disable and main.disable and main.n == 1


def test_nested_bars_close_when_the_pool_is_terminated(bars):
    # A loop still running when its pool is terminated closes with its
    # worker and its call's bar.
    reports = Reports()
    with FORK.Pool(1, instruments=[reports]) as pool:
        result = pool.map_async(functools.partial(h.slow_loop, seconds=10), [3],
                                progress=True)
        assert reports.first.wait(20)  # the loop has started
        pool.terminate()
        with pytest.raises(polyproc.ProcessError):
            result.get(10)
    [main] = call_bars(bars)
    [nested] = nested_bars(bars)
    assert main.disable and nested.disable and (main.n, nested.n) == (0, 0)


def test_loop_reports_are_dropped_without_a_call_bar(bars, capfd):
    with FORK.Pool(2) as pool:
        assert pool.map(h.loop, [5, 7]) == [10, 21]
    assert bars == [] and capfd.readouterr().err == ""


# -- outside a pool worker: a plain bar ------------------------------------------------

def test_progress_in_the_main_process_is_a_plain_bar(bars):
    assert list(polyproc.progress(range(4), desc="here")) == [0, 1, 2, 3]
    [bar] = bars
    assert (bar.n, bar.total, bar.desc, bar.disable) == (4, 4, "here", True)


def test_progress_in_a_thread_pool_task_is_a_plain_bar(bars):
    with ThreadPool(2) as pool:
        assert pool.map(h.loop, [3, 4]) == [3, 6]
    assert sorted(b.n for b in bars) == [3, 4] and all(b.disable for b in bars)
