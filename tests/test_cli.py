"""``python -m polyproc ...`` run as a user runs it: in a subprocess.

``run`` executes unmodified stdlib programs (tests/scripts/stdlib_*.py,
argv_and_exit.py) and must leave them what ``python SCRIPT`` gives them:
argv, ``__main__``, output and exit status, while their Pools, Queues and
ProcessPoolExecutors, and their children's, are polyproc's.
"""
from __future__ import annotations

import ast
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import polyproc
import polyproc.pool
from polyproc.__main__ import COMMANDS

SCRIPTS = Path(__file__).parent / "scripts"
ROOT = Path(polyproc.__file__).parent.parent


def polyproc_cli(*args: str, cwd: Path | str | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
    # polyproc importable in the program's children from the environment,
    # as for an installed polyproc, wherever the test runs from.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "polyproc", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": path})


# -- run: polyproc under an unmodified program ---------------------------------

@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_killed_worker_raises_worker_lost_instead_of_hanging(method):
    # With the stdlib, every future fails with BrokenProcessPool and
    # Pool.map never returns (gh-66587).
    result = polyproc_cli("run", str(SCRIPTS / "stdlib_worker_killed.py"), method)
    lines = result.stdout.splitlines()
    assert lines[:6] == ["executor 0: 0", "executor 1: 1", "executor 2: 4",
                         "executor 3: ExecutorWorkerLostError", "executor 4: 16",
                         "executor 5: 25"], result.stdout + result.stderr
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("polyproc.WorkerLostError: the worker process"), last
    assert "running task task(3)" in last


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_children_of_a_patched_program_are_patched(method):
    result = polyproc_cli("run", str(SCRIPTS / "stdlib_children.py"), method)
    assert result.returncode == 0, result.stderr
    seen = ast.literal_eval(result.stdout.splitlines()[0])
    assert seen == {"multiprocessing.Pool": "polyproc.context",
                    # run again in a spawn child, after its patch
                    "Pool bound at import": "polyproc.context",
                    "Queue": "polyproc.queues",
                    "ProcessPoolExecutor": "polyproc.executor"}


def test_without_polyproc_the_same_program_sees_the_stdlib():
    # The control for the test above: the script reports what it is given.
    result = subprocess.run([sys.executable, str(SCRIPTS / "stdlib_children.py"), "spawn"],
                            capture_output=True, text=True, timeout=60)
    seen = ast.literal_eval(result.stdout.splitlines()[0])
    assert seen["Queue"] == "multiprocessing.queues"
    assert seen["Pool bound at import"] == "multiprocessing.context"


def _seen(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.splitlines()[0])


def test_argv_main_module_and_path_are_the_programs(tmp_path):
    script = SCRIPTS / "argv_and_exit.py"
    result = polyproc_cli("run", str(script), "a", "--timeline", "-m", "x", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert _seen(result) == {"argv": [str(script), "a", "--timeline", "-m", "x"],
                             "name": "__main__", "file": str(script),
                             "path0": str(SCRIPTS), "main_is_me": True}


@pytest.mark.parametrize("program", [
    ["stdlib_manager_queue.py"],   # Manager().Queue(), Processes, a Pool; exit 3
    ["stdlib_futures.py"],         # ProcessPoolExecutor, as_completed, wait, map
    ["stdlib_spawn_main.py"],      # set_start_method("spawn") under the main guard
    ["-m", "stdlib_pkg", "a", "b"],   # python -m package, relative imports; exit 7
])
def test_real_programs_print_and_exit_as_without_polyproc(program):
    command = program if program[0] == "-m" else [str(SCRIPTS / program[0])]
    plain = subprocess.run([sys.executable, *command], capture_output=True, text=True,
                           timeout=60, cwd=SCRIPTS)
    patched = polyproc_cli("run", *command, cwd=SCRIPTS)
    assert (patched.stdout, patched.stderr, patched.returncode) == (
        plain.stdout, plain.stderr, plain.returncode)
    assert plain.stdout   # (the programs ran)


def test_exit_status_and_uncaught_exception_as_without_polyproc():
    script = str(SCRIPTS / "argv_and_exit.py")
    assert polyproc_cli("run", script, "exit", "3").returncode == 3
    plain = subprocess.run([sys.executable, script, "raise"],
                           capture_output=True, text=True, timeout=30)
    patched = polyproc_cli("run", script, "raise")
    assert patched.returncode == plain.returncode == 1
    # The same traceback, from the program's first frame: none of polyproc's.
    assert patched.stderr == plain.stderr
    assert "polyproc" not in patched.stderr


def test_run_a_module_with_dash_m():
    result = polyproc_cli("run", "-m", "argv_and_exit", "exit", "4", cwd=SCRIPTS)
    assert result.returncode == 4, result.stderr
    seen = _seen(result)
    assert seen["argv"] == [str(SCRIPTS / "argv_and_exit.py"), "exit", "4"]
    assert seen["name"] == "__main__" and seen["main_is_me"]


def test_a_missing_script_or_module_is_a_clear_error(tmp_path):
    result = polyproc_cli("run", "no_such_script.py", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"python -m polyproc run: can't open file "
        f"'{tmp_path / 'no_such_script.py'}': [Errno 2] No such file or directory\n")
    result = polyproc_cli("run", "-m", "no_such_module", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "python -m polyproc run: No module named no_such_module\n"


@pytest.mark.parametrize("method, kind", [("fork", "pool"), ("fork", "executor"),
                                          ("spawn", "executor")])
def test_ctrl_c_ends_the_program_as_without_polyproc(method, kind):
    # SIGINT to the process group, as a terminal's Ctrl-C, once a task runs.
    # polyproc's workers ignore SIGINT (the parent decides): leaving the
    # executor's ``with`` by the interrupt must not wait for the calls.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "polyproc", "run", str(SCRIPTS / "stdlib_sigint.py"),
         method, kind], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env={**os.environ, "PYTHONPATH": path})
    try:
        assert proc.stdout.readline().startswith("task started")
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=15)
        # Python's own way to end on an uncaught KeyboardInterrupt: killed by SIGINT.
        assert proc.returncode == -signal.SIGINT, err
        assert err.rstrip().endswith("KeyboardInterrupt")
        assert _wait_for_no_live_process(proc.pid, within=10) == []
    finally:
        _kill_group(proc.pid)
        proc.wait()   # (reaped by communicate() when it returned)


def _wait_for_no_live_process(group: int, within: float) -> list[int]:
    """The processes of process group *group* still alive (not zombies)
    after waiting up to *within* seconds for each to exit (a pidfd becomes
    readable when its process has exited)."""
    ps = subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(group)],
                        capture_output=True, text=True).stdout.splitlines()
    deadline = time.monotonic() + within
    live = []
    for pid, stat in (line.split() for line in ps if line.strip()):
        if "Z" in stat:
            continue
        try:
            fd = os.pidfd_open(int(pid))
        except ProcessLookupError:
            continue   # gone since ps looked
        with os.fdopen(fd) as pidfd:
            ready, _, _ = select.select([pidfd], [], [],
                                        max(0.0, deadline - time.monotonic()))
        if not ready:
            live.append(int(pid))
    return live


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _trace(path: Path) -> tuple[dict[str, int], list[dict]]:
    """The worker tracks (name -> pid) and the chunk events of a timeline file."""
    events = json.loads(path.read_text())["traceEvents"]
    workers = {e["args"]["name"]: e["pid"] for e in events
               if e["ph"] == "M" and e["name"] == "process_name"
               and e["args"]["name"].startswith("worker ")}
    return workers, [e for e in events if e.get("cat") == "chunk"]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_timeline_writes_one_file_per_pool(method, tmp_path):
    result = polyproc_cli("run", "--timeline", "run.json",
                          str(SCRIPTS / "stdlib_pools_timeline.py"), method, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2470", "506", "30", "5"]   # as without polyproc
    assert result.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run-2.json", "run-3.json", "run.json"]
    # Made in that order: Pool(2) (4 chunks), Pool(3) (3), the Executor (5 tasks).
    for name, workers, chunks in [("run.json", 2, 4), ("run-2.json", 3, 3)]:
        tracks, chunk_events = _trace(tmp_path / name)
        assert len(tracks) == workers, (name, tracks)
        assert len(chunk_events) == chunks, name
        assert {e["pid"] for e in chunk_events} <= set(tracks.values())
    tracks, chunk_events = _trace(tmp_path / "run-3.json")
    assert 1 <= len(tracks) <= 2   # the Executor starts workers as work comes
    assert sum(e["args"]["tasks"] for e in chunk_events) == 5
    assert {e["pid"] for e in chunk_events} <= set(tracks.values())


def test_plot_draws_the_timeline_of_a_run(tmp_path):
    run = polyproc_cli("run", "--timeline", "run.json",
                       str(SCRIPTS / "stdlib_pools_timeline.py"), "fork", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    result = polyproc_cli("plot", "run-2.json", "-o", "run.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    png = (tmp_path / "run.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


@pytest.mark.parametrize("option, value, what", [
    ("--cluster", "tcp://127.0.0.1:1", "the cluster backend"),
    ("--timeline", "run.json", "the timeline")])
def test_an_option_a_pool_cannot_honour_is_a_clear_error(option, value, what, tmp_path):
    # A polyproc whose Pool does not take the keyword (as before the
    # timeline, or the cluster backend, existed): run it with the keyword
    # taken out of Pool's signature.  It must say so, and run nothing.
    keyword = option[2:]
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_KEYWORD, keyword, "run", option, value,
         str(SCRIPTS / "argv_and_exit.py")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{what} is not available in this version of polyproc" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ``python -m polyproc ARGS`` with Pool's keyword sys.argv[1] taken out.
_WITHOUT_KEYWORD = """
import inspect, sys
import polyproc.pool
from polyproc.__main__ import main
keyword = sys.argv.pop(1)
signature = inspect.signature(polyproc.pool.Pool)
polyproc.pool.Pool.__signature__ = signature.replace(parameters=[
    p for p in signature.parameters.values() if p.name != keyword])
sys.argv[0] = "polyproc"
sys.exit(main())
"""


def test_cluster_is_honoured_exactly_when_pool_takes_it(tmp_path):
    # Until Pool takes cluster=, --cluster is the error above; once it
    # does, run must not claim it is unavailable.
    result = polyproc_cli("run", "--cluster", "tcp://127.0.0.1:1",
                          str(SCRIPTS / "argv_and_exit.py"), cwd=tmp_path)
    unavailable = "the cluster backend is not available" in result.stderr
    assert unavailable == ("cluster" not in _pool_parameters()), result.stderr
    if unavailable:
        assert result.returncode == 2 and result.stdout == ""


def _pool_parameters() -> set[str]:
    import inspect
    return set(inspect.signature(polyproc.pool.Pool).parameters)


# -- help, and the commands ----------------------------------------------------

@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command):
    result = polyproc_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m polyproc {command}")
    # The command's description (argparse wraps it over lines).
    assert COMMANDS[command] in " ".join(result.stdout.split())


def test_top_level_help_lists_every_command():
    result = polyproc_cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_a_command_is_required():
    result = polyproc_cli()
    assert result.returncode == 2
    assert "required: COMMAND" in result.stderr


# -- bench ---------------------------------------------------------------------

def test_bench_prints_a_row_of_ratios_per_scenario():
    # Two of the quick scenarios, once each: the real command, kept short.
    result = polyproc_cli("bench", "--quick", "--repeat", "1", "--only", "Queue",
                          "Process start")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("polyproc ") and "bench --quick" in lines[0]
    assert lines[1].split() == ["scenario", "stdlib", "polyproc", "speed-up"]
    rows = lines[2:4]
    assert rows[0].startswith("Queue, 10,000 64-byte messages")
    assert rows[1].startswith("Process start + join, x5")
    for row in rows:
        stdlib_ms, polyproc_ms, ratio = row.split()[-5], row.split()[-3], row.split()[-1]
        assert float(stdlib_ms) > 0 and float(polyproc_ms) > 0
        assert ratio.endswith("x")
        assert float(ratio[:-1]) == pytest.approx(float(stdlib_ms) / float(polyproc_ms),
                                                  rel=0.05)
    assert lines[4].startswith("speed-up: stdlib time / polyproc time")


def test_bench_with_no_matching_scenario_says_so():
    result = polyproc_cli("bench", "--only", "no-such-scenario")
    assert result.returncode == 2
    assert "no scenario matches" in result.stderr
