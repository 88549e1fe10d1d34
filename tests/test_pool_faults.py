"""Pool workers that die while they start, between tasks, or while sending results.

What the scheduler does about a worker that dies is in polyproc/_scheduler.py's
docstring ("Who is to blame", "What a retry costs", "Start-up"); these tests
kill real workers with real signals at known moments.
"""
from __future__ import annotations

import functools
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import polyproc
from polyproc import ProcessError, WorkerLostError
from polyproc._pool._backends.process.blame import MAX_STARTUP_FAILURES

import _pool_fault_helpers as h

SCRIPTS = Path(__file__).parent / "scripts"


class StartGate:
    """Holds the workers of a pool made with ``initializer=h.wait_at_gate``
    while they start, so that a test can kill one at a known moment: before
    it has told the pool it is ready.

    Each worker writes its pid to the *announce* FIFO, then waits for a
    token on the *gate* FIFO.  This process keeps both open (read-write, so
    that no open blocks), reads the pids, and hands out tokens.
    """

    def __init__(self, directory: Path):
        self.announce_path = str(directory / "announce")
        self.gate_path = str(directory / "gate")
        os.mkfifo(self.announce_path)
        os.mkfifo(self.gate_path)
        self._announce = os.open(self.announce_path, os.O_RDWR)
        self._gate = os.open(self.gate_path, os.O_RDWR)
        self._buffer = b""

    @property
    def initargs(self) -> tuple[str, str]:
        return (self.announce_path, self.gate_path)

    def next_started(self, timeout: float = 30) -> int:
        """The pid of the next worker that reached the gate."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._announce], [], [], max(0.0, remaining))
            assert ready, f"no worker reached the gate within {timeout} s"
            self._buffer += os.read(self._announce, 4096)
        line, self._buffer = self._buffer.split(b"\n", 1)
        return int(line)

    def let_in(self, workers: int) -> None:
        """Let *workers* more workers (waiting now or later) finish starting."""
        os.write(self._gate, b"t" * workers)

    def close(self) -> None:
        os.close(self._announce)
        os.close(self._gate)


@pytest.fixture
def gate(tmp_path):
    g = StartGate(tmp_path)
    yield g
    g.close()


def kill_and_wait(pid: int, signum: int, seconds: float = 10) -> None:
    """Send *signum* to process *pid* and wait until it has exited.

    Waiting matters here: a process that was woken by the signal can still
    finish the read it was blocked in (and take a gate token) before it dies.
    """
    fd = os.pidfd_open(pid)
    try:
        signal.pidfd_send_signal(fd, signum)
        ready, _, _ = select.select([fd], [], [], seconds)
        assert ready, f"process {pid} still runs {seconds} s after signal {signum}"
    finally:
        os.close(fd)


def wait_until(condition, seconds: float = 30, what: str = "condition") -> None:
    """Poll *condition* until true, within *seconds* (state with no event to wait on)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# -- killed while starting: a lost worker, not a start-up failure ------------

@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_workers_killed_while_starting_are_replaced(ctx, gate, signum):
    """Kills before a worker is ready (the OOM killer picks the newest, biggest
    process) are lost workers: more of them in a row than the limit of start-up
    failures, with and without another worker ready, and the pool goes on."""
    with ctx.Pool(2, initializer=h.wait_at_gate, initargs=gate.initargs) as p:
        first, second = gate.next_started(), gate.next_started()
        kill_and_wait(first, signum)               # no worker ready yet
        gate.let_in(1)                             # one of the others starts
        ready = p.apply(h.pid_of)
        starting = second if ready != second else gate.next_started()
        for _ in range(MAX_STARTUP_FAILURES + 1):  # one ready, the other killed
            kill_and_wait(starting, signum)
            starting = gate.next_started()
        gate.let_in(1)
        assert p.map(h.square, range(20)) == [x * x for x in range(20)]
        assert p._backend.broken is None


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_spawned_workers_killed_right_after_start_are_replaced(signum):
    """A spawned worker takes a few hundred milliseconds to import its modules:
    killed during that, it used to be reported as a main module that 'must be
    importable'."""
    with polyproc.get_context("spawn").Pool(2) as p:
        killed: set[int] = set()
        for _ in range(2):  # the first workers, then their replacements
            wait_until(lambda: len([w for w in p._pool if w.pid not in killed]) == 2,
                       what="replacement workers")
            for w in p._pool:
                if w.pid not in killed:
                    os.kill(w.pid, signum)
                    killed.add(w.pid)
        assert p.map(h.square, range(6)) == [x * x for x in range(6)]


def test_pool_that_no_worker_can_start_breaks_saying_why(ctx_fs, gate, monkeypatch):
    """Something that kills every new worker (the OOM killer, when importing the
    main module takes more memory than is free) would make the pool respawn
    workers for ever: after a while without any worker ready it breaks, with a
    message that says what killed them.  (Shortened here from 10 kills and
    60 s.)"""
    from polyproc._pool._backends.process import blame
    monkeypatch.setattr(blame, "MAX_KILLED_STARTS", 3)
    monkeypatch.setattr(blame, "STARTUP_STALL_SECONDS", 0.0)
    p = ctx_fs.Pool(1, initializer=h.wait_at_gate, initargs=gate.initargs)
    try:
        result = p.map_async(h.square, range(4))
        for _ in range(3):
            kill_and_wait(gate.next_started(), signal.SIGTERM)
        with pytest.raises(ProcessError, match="killed while starting") as info:
            result.get(30)
        assert "terminated by SIGTERM" in str(info.value)
        assert "importable" not in str(info.value)
    finally:
        p.terminate()


# -- failing to start on its own: the pool breaks, saying why ----------------

def test_initializer_that_exits_breaks_the_pool_naming_the_exit_code(ctx_fs):
    p = ctx_fs.Pool(2, initializer=h.exit_initializer, initargs=(3,))
    try:
        with pytest.raises(ProcessError, match="died while starting") as info:
            p.map(h.square, range(4))
        assert not isinstance(info.value, WorkerLostError)
        assert "exited with code 3" in str(info.value)
        assert "initializer" in str(info.value)
        assert p._backend._worker_counter <= 4  # no respawn loop
    finally:
        p.terminate()


def test_initializer_that_crashes_breaks_the_pool_naming_the_crash(ctx_fs):
    p = ctx_fs.Pool(1, initializer=h.segfault_initializer)
    try:
        with pytest.raises(ProcessError, match="died while starting") as info:
            p.map(h.square, range(4))
        assert "segmentation fault" in str(info.value)
    finally:
        p.terminate()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_main_module_that_fails_in_workers_is_one_clear_error(method):
    proc = subprocess.run([sys.executable, str(SCRIPTS / "pool_child_import_error.py"), method],
                          capture_output=True, text=True, timeout=50, cwd=str(SCRIPTS))
    assert proc.returncode != 0
    assert "ProcessError: a pool worker died while starting" in proc.stderr, proc.stderr
    assert "exited with code 1" in proc.stderr
    assert "main module" in proc.stderr
    # The workers' own tracebacks say why, once per worker: no respawn loop.
    assert 1 <= proc.stderr.count("ImportError: this module cannot be imported") <= 2, proc.stderr


# -- retries: N reruns of a task whose worker died, exactly -------------------

@pytest.mark.parametrize("retries", [0, 2])
def test_task_that_kills_its_worker_runs_retries_plus_one_times(ctx_fs, tmp_path, retries):
    runs = tmp_path / "runs"
    with ctx_fs.Pool(2) as p:
        with pytest.raises(WorkerLostError, match="count_run_and_die"):
            p.apply(h.count_run_and_die, (str(runs),), retries=retries)
        assert runs.stat().st_size == retries + 1
        assert p.apply(h.square, (3,)) == 9


def test_workers_killed_between_tasks_cost_no_retries(gate):
    """A worker killed while it waits for work (its next task still in its
    pipe) had nothing running: the task it held runs elsewhere, without using
    up a retry, however often that happens.  (It used to fail after three
    such deaths, whatever its retries.)"""
    workers = 4
    gate.let_in(workers)
    with polyproc.get_context("fork").Pool(workers, initializer=h.wait_at_gate,
                                           initargs=gate.initargs) as p:
        backend = p._backend
        pids = [gate.next_started() for _ in range(workers)]
        wait_until(lambda: all(w.ready for w in list(backend._workers.values())),
                   what="every worker ready")
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)  # ready and idle: never reads its pipe
        result = p.apply_async(h.square, (7,), retries=0)
        for _ in range(workers):  # the task goes from one stopped worker to the next
            wait_until(lambda: any(w.assigned for w in list(backend._workers.values())),
                       what="the task dispatched")
            holder = next(w for w in list(backend._workers.values()) if w.assigned)
            os.kill(holder.process.pid, signal.SIGKILL)
            wait_until(lambda holder=holder: backend._workers.get(holder.slot) is not holder,
                       what="the death handled")
        gate.let_in(1)  # a replacement starts: the task runs there
        assert result.get(30) == 49


def test_result_that_kills_its_worker_when_sent_fails_after_its_retries(tmp_path):
    """A death while results are sent is pinned on a task once that task is
    sent back alone; it then fails after its retries, and the tasks sent with
    it are not charged."""
    runs = tmp_path / "runs"
    retries = 1
    func = functools.partial(h.kill_when_result_sent, bad=13, path=str(runs))
    with polyproc.get_context("fork").Pool(2) as p:
        assert p.map(h.square, range(100)) == [x * x for x in range(100)]
        outcomes = []
        it = p.imap(func, range(40), chunksize=4)
        for _ in range(40):
            try:
                outcomes.append(it.next(timeout=30))
            except WorkerLostError as exc:
                outcomes.append(exc)
    assert isinstance(outcomes[13], WorkerLostError) and "[task 13]" in str(outcomes[13])
    assert outcomes[:13] + outcomes[14:] == [x for x in range(40) if x != 13]
    # retries + 1 runs charged, plus at most one run that isolated it.
    assert retries + 1 <= runs.stat().st_size <= retries + 2
