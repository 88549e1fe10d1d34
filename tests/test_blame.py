"""Blame decisions (polyproc/_pool/_backends/process/blame.py) as the functions they are.

No process dies here: each case states what the dead worker's progress
slot said and what it held, and checks what is requeued and what fails.
The same decisions are exercised end to end, with real SIGKILLs, in
test_pool_faults.py.
"""
from __future__ import annotations

import signal

import pytest

from polyproc import ProcessError, TaskTimeoutError, WorkerLostError
from polyproc._pool import messages as m
from polyproc._pool._backends.process import blame
from polyproc._pool._backends.process.blame import Death, recover_lost_chunks
from polyproc._pool.chunks import Transport, make_chunk

KILLED = -signal.SIGKILL


def chunk(start: int, count: int, retries: int = 0, tracking: int = m.TRACK_INDEX):
    c = make_chunk(b"f", "f", m.CALL_MAP, list(range(start, start + count)), start,
                   None, None, retries, Transport.NONE)
    c.tracking = tracking
    return c


def death(phase: float, on=None, task: int = 0, timed_out=None) -> Death:
    return Death(phase, on.chunk_id if on is not None else -1, task, timed_out, 4242,
                 KILLED)


def spans(chunks) -> list[tuple[int, int]]:
    return [(c.start, c.start + c.count) for c in chunks]


def test_a_worker_waiting_for_work_charges_nothing():
    lost = [chunk(0, 3), chunk(3, 2)]
    recovery = recover_lost_chunks(lost, death(m.PHASE_IDLE))
    assert spans(recovery.requeue) == [(0, 3), (3, 5)]
    assert recovery.failures == []


def test_the_running_task_is_charged_and_the_rest_requeued():
    ran, current, rest = chunk(0, 2), chunk(2, 4), chunk(6, 1)
    recovery = recover_lost_chunks([ran, current, rest],
                                   death(m.PHASE_RUNNING, current, task=1))
    assert spans(recovery.requeue) == [(0, 2), (2, 3), (4, 6), (6, 7)]
    [(failed, task, error)] = recovery.failures
    assert failed is current and task == 1
    assert isinstance(error, WorkerLostError)
    assert "pid 4242" in str(error) and "SIGKILL" in str(error) and "retries=N" in str(error)


def test_a_charge_with_retries_left_runs_the_task_again():
    current = chunk(0, 3, retries=2)
    recovery = recover_lost_chunks([current], death(m.PHASE_RUNNING, current, task=2))
    assert recovery.failures == []
    assert spans(recovery.requeue) == [(0, 2), (2, 3)]
    assert recovery.requeue[-1].retries == 1


def test_a_task_killed_for_its_timeout_fails_with_task_timeout_error():
    current = chunk(0, 1, retries=5)
    recovery = recover_lost_chunks(
        [current], death(m.PHASE_RUNNING, current, timed_out=(current.chunk_id, 0)))
    [(_, _, error)] = recovery.failures
    assert isinstance(error, TaskTimeoutError)
    assert recovery.requeue == []


def test_death_while_loading_several_tasks_splits_them_uncharged():
    current = chunk(0, 3)
    recovery = recover_lost_chunks([current], death(m.PHASE_LOADING, current))
    assert spans(recovery.requeue) == [(0, 1), (1, 2), (2, 3)]
    assert recovery.failures == []


def test_untracked_fast_tasks_are_handled_like_loading():
    current = chunk(0, 2, tracking=m.TRACK_NONE)
    recovery = recover_lost_chunks([current], death(m.PHASE_RUNNING, current, task=1))
    assert spans(recovery.requeue) == [(0, 1), (1, 2)] and recovery.failures == []


def test_death_after_tasks_ran_isolates_them_then_charges_the_isolated_one():
    ran, current = chunk(0, 1), chunk(1, 2)
    first = recover_lost_chunks([ran, current], death(m.PHASE_DUMPING, current))
    assert spans(first.requeue) == [(0, 1), (1, 2), (2, 3)]
    assert all(c.isolated for c in first.requeue) and first.failures == []
    suspect = first.requeue[1]
    second = recover_lost_chunks([suspect], death(m.PHASE_IDLE, suspect))
    [(failed, _, error)] = second.failures
    assert failed is suspect and isinstance(error, WorkerLostError)


def test_startup_failures_break_the_pool_only_when_a_new_worker_would_fail_too():
    record = blame.StartupRecord()
    error = record.worker_died(1, others_ready=False, start_method="spawn", initializer=None)
    assert isinstance(error, ProcessError) and "if __name__ == '__main__'" in str(error)
    record = blame.StartupRecord()
    record.worker_ready()
    for _ in range(blame.MAX_STARTUP_FAILURES - 1):
        assert record.worker_died(3, False, "fork", "init") is None
    assert "init()" in str(record.worker_died(3, False, "fork", "init"))


def test_workers_killed_while_starting_are_replaced_until_none_can_start(monkeypatch):
    monkeypatch.setattr(blame, "MAX_KILLED_STARTS", 2)
    monkeypatch.setattr(blame, "STARTUP_STALL_SECONDS", 0.0)
    record = blame.StartupRecord()
    assert record.worker_died(KILLED, others_ready=True, start_method="fork",
                              initializer=None) is None
    assert record.worker_died(KILLED, False, "fork", None) is None
    error = record.worker_died(KILLED, False, "fork", None)
    assert "killed while starting" in str(error) and "SIGKILL" in str(error)


@pytest.mark.parametrize("exitcode, own", [(1, True), (0, True), (-signal.SIGSEGV, True),
                                           (-signal.SIGKILL, False), (None, False)])
def test_what_counts_as_a_worker_failing_on_its_own(exitcode, own):
    assert blame.failed_on_its_own(exitcode) is own
