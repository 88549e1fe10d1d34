"""Instruments (polyproc/_pool/instruments.py): the events a pool reports, their
order and times, with real workers killed by real signals."""
from __future__ import annotations

import logging
import os
import signal
import threading

import pytest

import polyproc
from polyproc import TaskTimeoutError, WorkerLostError
from polyproc.pool import ThreadPool

import _pool_helpers as h

FORK = polyproc.get_context("fork")
HOOKS = ("chunk_queued", "chunk_dispatched", "results_received", "chunk_finished",
         "chunk_failed", "task_retried", "task_timed_out", "worker_started",
         "worker_exited")
# Worker times and parent times are readings of one clock (CLOCK_MONOTONIC)
# taken in different processes: compared to within float rounding.
EPS = 1e-6


class Recorder(polyproc.Instrument):
    """Records every event, with the name of the thread that fired it."""

    def __init__(self):
        self.events: list[tuple[str, tuple, str]] = []
        self.cond = threading.Condition()

    def record(self, hook: str, info) -> None:
        with self.cond:
            self.events.append((hook, info, threading.current_thread().name))
            self.cond.notify_all()

    def of(self, hook: str) -> list:
        with self.cond:
            return [info for name, info, _ in self.events if name == hook]

    def index(self, hook: str, **fields) -> int:
        """Position in the record of the first *hook* event with these fields."""
        with self.cond:
            for i, (name, info, _) in enumerate(self.events):
                if name == hook and all(getattr(info, k) == v for k, v in fields.items()):
                    return i
        raise AssertionError(f"no {hook} event with {fields}: {self.events}")

    def wait_for(self, predicate, limit: float = 20.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self), limit), self.events


def _recording(hook):
    def method(self, info):
        self.record(hook, info)
    method.__name__ = hook
    return method


for _hook in HOOKS:
    setattr(Recorder, _hook, _recording(_hook))


def _check_chunk_life(rec: Recorder, chunk_id: int) -> None:
    """queued, dispatched, received, finished: in this order and in time."""
    queued = next(i for i in rec.of("chunk_queued") if i.chunk_id == chunk_id)
    sent = next(i for i in rec.of("chunk_dispatched") if i.chunk_id == chunk_id)
    message = next(i for i in rec.of("results_received") if chunk_id in i.chunk_ids)
    done = next(i for i in rec.of("chunk_finished") if i.chunk_id == chunk_id)
    assert (rec.index("chunk_queued", chunk_id=chunk_id)
            < rec.index("chunk_dispatched", chunk_id=chunk_id)
            < rec.index("results_received", pid=message.pid, time=message.time)
            < rec.index("chunk_finished", chunk_id=chunk_id))
    assert sent.pid == message.pid == done.pid
    assert queued.call_id == sent.call_id == done.call_id
    ran_until = done.started + done.load_seconds + done.run_seconds
    assert queued.time <= sent.time <= done.started + EPS
    assert done.load_seconds >= 0 and done.run_seconds >= 0
    assert ran_until <= message.dump_started + EPS
    assert message.dump_seconds >= 0
    assert message.dump_started + message.dump_seconds <= message.time + EPS
    assert message.time <= done.time and message.nbytes > 0


# -- a map, from start to finish --------------------------------------------------

def test_map_reports_each_chunk_in_order_with_the_times_workers_measured(ctx):
    rec = Recorder()
    with ctx.Pool(2, instruments=[rec]) as pool:
        # Both workers started (a spawned one can still be starting when
        # the map is over; then only its worker_exited, was_ready False).
        rec.wait_for(lambda r: len(r.of("worker_started")) == 2)
        assert pool.map(h.square, range(40), chunksize=5) == [x * x for x in range(40)]
        pool.close()
        pool.join()
    assert {thread for _, _, thread in rec.events} == {"PoolScheduler"}

    started = rec.of("worker_started")
    assert sorted(w.slot for w in started) == [0, 1]
    for w in started:
        assert w.replaces is None
        assert w.spawned <= w.entered + EPS and w.entered <= w.ready <= w.time + EPS

    queued = rec.of("chunk_queued")
    assert sorted(q.start for q in queued) == list(range(0, 40, 5))
    assert {(q.tasks, q.function, q.requeued) for q in queued} == {(5, "square", False)}
    assert len({q.call_id for q in queued}) == 1 and all(q.payload_bytes > 0 for q in queued)
    for q in queued:
        _check_chunk_life(rec, q.chunk_id)
    finished = rec.of("chunk_finished")
    assert sum(f.tasks for f in finished) == 40 and sum(f.failed for f in finished) == 0
    assert not rec.of("chunk_failed") and not rec.of("task_retried")

    exited = rec.of("worker_exited")
    assert sorted(e.pid for e in exited) == sorted(w.pid for w in started)
    assert {(e.reason, e.exitcode, e.signal, e.chunk_ids) for e in exited} == \
        {("shut down", 0, None, ())}


def test_task_that_raises_is_counted_failed_in_its_chunk():
    rec = Recorder()
    with FORK.Pool(1, instruments=[rec]) as pool:
        assert pool.map(h.identity_after, [1, 2, 3], chunksize=3) == [1, 2, 3]
        with pytest.raises(ValueError):
            pool.map(h.raise_value_error, range(4), chunksize=2)
    assert [(f.start, f.tasks, f.failed) for f in rec.of("chunk_finished")] == \
        [(0, 3, 0), (0, 2, 2), (2, 2, 2)]


# -- workers lost, tasks retried and timed out --------------------------------------

def test_worker_killed_by_a_signal_is_reported_lost_then_replaced(ctx):
    rec = Recorder()
    with ctx.Pool(1, instruments=[rec]) as pool:
        rec.wait_for(lambda r: r.of("worker_started"))
        victim = rec.of("worker_started")[0].pid
        os.kill(victim, signal.SIGKILL)
        rec.wait_for(lambda r: any(w.replaces == victim for w in r.of("worker_started")))
        assert pool.map(h.square, range(3)) == [0, 1, 4]
    lost = next(e for e in rec.of("worker_exited") if e.pid == victim)
    assert (lost.reason, lost.exitcode, lost.signal, lost.was_ready, lost.chunk_ids) == \
        ("lost", -signal.SIGKILL, "SIGKILL", True, ())
    new = next(w for w in rec.of("worker_started") if w.replaces == victim)
    assert new.slot == lost.slot and new.pid != victim
    assert lost.time <= new.spawned <= new.time


def test_task_that_kills_its_worker_fails_the_task_and_requeues_the_rest():
    rec = Recorder()
    with FORK.Pool(1, instruments=[rec]) as pool, pytest.raises(WorkerLostError):
        pool.starmap(h.kill_on, [(0, 9), (9, 9), (2, 9)], chunksize=3)
    chunk = rec.of("chunk_queued")[0]
    lost = next(e for e in rec.of("worker_exited") if e.reason == "lost")
    assert lost.signal == "SIGKILL" and lost.chunk_ids == (chunk.chunk_id,)
    failed = rec.of("chunk_failed")
    assert [(f.chunk_id, f.start, f.tasks, type(f.error)) for f in failed] == \
        [(chunk.chunk_id, 1, 1, WorkerLostError)]
    requeued = [q for q in rec.of("chunk_queued") if q.requeued]
    assert [(q.start, q.tasks) for q in requeued] == [(0, 1), (2, 1)]
    assert rec.index("worker_exited", pid=lost.pid) < rec.index("chunk_failed") < \
        rec.index("chunk_queued", requeued=True)
    assert sorted((f.start, f.tasks) for f in rec.of("chunk_finished")) == [(0, 1), (2, 1)]


def test_retry_is_reported_with_the_chunk_that_runs_it_again(ctx_fs, tmp_path):
    rec = Recorder()
    with ctx_fs.Pool(1, instruments=[rec]) as pool:
        assert pool.apply(h.die_first_time, (str(tmp_path / "marker"),), retries=1) == "ok"
    first = rec.of("chunk_queued")[0]
    retried, = rec.of("task_retried")
    assert (retried.chunk_id, retried.position, retried.retries_left) == \
        (first.chunk_id, 0, 0)
    lost = next(e for e in rec.of("worker_exited") if e.reason == "lost")
    assert lost.pid == retried.pid and lost.signal == "SIGKILL"
    assert lost.chunk_ids == (first.chunk_id,)
    again = next(q for q in rec.of("chunk_queued") if q.chunk_id == retried.new_chunk_id)
    assert again.requeued and again.call_id == first.call_id
    assert rec.index("worker_exited", pid=lost.pid) < rec.index("task_retried") < \
        rec.index("chunk_queued", chunk_id=again.chunk_id)
    _check_chunk_life(rec, again.chunk_id)
    assert not rec.of("chunk_failed")


@pytest.mark.timeout(30)
def test_timeout_is_reported_then_the_worker_and_the_task(ctx_fs):
    rec = Recorder()
    with ctx_fs.Pool(1, instruments=[rec]) as pool:
        slow = pool.apply_async(h.sleep_for, (30,), timeout=0.3)
        with pytest.raises(TaskTimeoutError):
            slow.get(10)
    chunk = rec.of("chunk_queued")[0]
    timed_out, = rec.of("task_timed_out")
    assert (timed_out.chunk_id, timed_out.position, timed_out.timeout) == \
        (chunk.chunk_id, 0, 0.3)
    assert timed_out.time - timed_out.started > 0.3
    killed = next(e for e in rec.of("worker_exited") if e.pid == timed_out.pid)
    assert (killed.reason, killed.signal, killed.chunk_ids) == \
        ("timed out", "SIGKILL", (chunk.chunk_id,))
    failed, = rec.of("chunk_failed")
    assert failed.chunk_id == chunk.chunk_id and isinstance(failed.error, TaskTimeoutError)
    assert rec.index("task_timed_out") < rec.index("worker_exited", pid=killed.pid) < \
        rec.index("chunk_failed")


# -- attaching and detaching ---------------------------------------------------------

class Faulty(polyproc.Instrument):
    def __init__(self):
        self.calls = 0

    def chunk_finished(self, info):
        self.calls += 1
        raise RuntimeError("a bug in the instrument")


def test_an_instrument_that_raises_is_removed_and_the_pool_goes_on(caplog):
    faulty, rec = Faulty(), Recorder()
    with caplog.at_level(logging.ERROR, logger="polyproc.Instrument"), \
            FORK.Pool(2, instruments=[faulty, rec]) as pool:
        assert pool.map(h.square, range(20), chunksize=2) == [x * x for x in range(20)]
        assert pool.map(h.square, range(20), chunksize=2) == [x * x for x in range(20)]
        with pytest.raises(KeyError):
            pool.remove_instrument(faulty)
    assert faulty.calls == 1
    assert len(rec.of("chunk_finished")) == 20  # the other instrument saw everything
    record, = [r for r in caplog.records if r.name == "polyproc.Instrument"]
    assert "chunk_finished" in record.getMessage() and "removed" in record.getMessage()
    assert "a bug in the instrument" in caplog.text


def test_instruments_are_added_and_removed_while_the_pool_runs():
    rec = Recorder()
    with FORK.Pool(1) as pool:
        assert pool.map(h.square, range(4), chunksize=2) == [0, 1, 4, 9]
        pool.add_instrument(rec)
        pool.add_instrument(rec)  # attached already: a no-op
        assert pool.map(h.square, range(6), chunksize=2) == [x * x for x in range(6)]
        pool.remove_instrument(rec)
        assert pool.map(h.square, range(4), chunksize=2) == [0, 1, 4, 9]
        with pytest.raises(KeyError):
            pool.remove_instrument(rec)
        assert not pool._registry.instruments  # nothing left to fire
    finished = rec.of("chunk_finished")
    assert [(f.start, f.tasks) for f in finished] == [(0, 2), (2, 2), (4, 2)]
    assert len({f.call_id for f in finished}) == 1
    assert [q.chunk_id for q in rec.of("chunk_queued")] == [f.chunk_id for f in finished]


def test_an_instrument_watches_only_the_events_it_overrides():
    class CountsFinished(polyproc.Instrument):
        def __init__(self):
            self.tasks = 0

        def chunk_finished(self, info):
            self.tasks += info.tasks

    counter = CountsFinished()
    with FORK.Pool(1, instruments=[counter]) as pool:
        assert set(pool._registry.instruments) == {"chunk_finished"}
        assert pool.map(h.square, range(7)) == [x * x for x in range(7)]
    assert counter.tasks == 7


def test_executor_reports_events_and_detaches():
    rec = Recorder()
    with polyproc.Executor(1, mp_context=FORK, instruments=[rec]) as ex:
        assert ex.submit(h.square, 3).result(timeout=20) == 9
        ex.remove_instrument(rec)
        assert ex.submit(h.square, 4).result(timeout=20) == 16
        with pytest.raises(KeyError):
            ex.remove_instrument(rec)
        ex.add_instrument(rec)
        assert list(ex.map(h.square, [5, 6])) == [25, 36]
    assert {thread for _, _, thread in rec.events} == {"PoolScheduler"}
    assert [f.tasks for f in rec.of("chunk_finished")] == [1, 1, 1]
    assert len(rec.of("worker_exited")) == 1


def test_thread_pool_reports_chunks():
    rec = Recorder()
    with ThreadPool(2, instruments=[rec]) as pool:
        assert pool.map(h.square, range(10), chunksize=5) == [x * x for x in range(10)]
    assert sorted(q.start for q in rec.of("chunk_queued")) == [0, 5]
    finished = rec.of("chunk_finished")
    assert sorted((f.start, f.tasks, f.pid) for f in finished) == \
        [(0, 5, os.getpid()), (5, 5, os.getpid())]
    for f in finished:
        sent = next(d for d in rec.of("chunk_dispatched") if d.chunk_id == f.chunk_id)
        assert sent.time <= f.started + EPS and f.started + f.run_seconds <= f.time + EPS


# -- the progress bar, the first instrument ----------------------------------------

def test_progress_bar_counts_tasks_that_fail_before_reaching_a_worker(capfd):
    with FORK.Pool(2) as pool:
        with pytest.raises(TypeError):
            pool.map(h.square, [1, threading.Lock(), 3], chunksize=1, progress=True)
        assert not pool._registry.instruments  # the bar detached when the call ended
    assert "3/3" in capfd.readouterr().err


def test_progress_bar_of_an_unsized_imap_counts_completed_tasks(capfd):
    with FORK.Pool(2) as pool:
        it = pool.imap_unordered(h.square, iter(range(9)), progress=True)
        assert sorted(it) == [x * x for x in range(9)]
        assert not pool._registry.instruments
    assert "9/9" in capfd.readouterr().err
