"""polyproc._cli.demo and ``python -m polyproc demo``, shrunk to run in a second."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from polyproc._cli import demo as _demo


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(_demo, "PRIMES_BELOW", 20_000)
    monkeypatch.setattr(_demo, "TINY_TASKS", 300)
    monkeypatch.setattr(_demo, "STDLIB_PATIENCE_S", 0.5)


def test_count_primes_is_right():
    assert _demo.count_primes((0, 100)) == 25
    assert _demo.count_primes((0, 2)) == 0
    assert _demo.count_primes((2, 3)) == 1
    assert sum(map(_demo.count_primes, [(0, 5000), (5000, 10_000)])) == 1229


@pytest.mark.timeout(60)
def test_demo_sections_and_table(small):
    rows = [section(2) for section in _demo.SECTIONS]
    primes, tiny, killed = rows
    assert primes.notes[0].startswith("2,262 primes, the same from all three")
    assert all(isinstance(v, float) for v in (primes.serial, primes.stdlib, primes.polyproc))
    assert tiny.serial is None and isinstance(tiny.polyproc, float)
    assert killed.stdlib.startswith("map lost")
    assert killed.polyproc.startswith("imap: WorkerLostError for task 3 only, 7 ok")
    out = io.StringIO()
    _demo.print_table(rows, out)
    text = out.getvalue()
    assert text.splitlines()[0].split()[:4] == ["workload", "serial", "stdlib", "polyproc"]
    assert "count primes below 20,000 (map)" in text
    assert "    polyproc: imap: WorkerLostError for task 3 only" in text


def test_command_line_rejects_an_unknown_command():
    result = subprocess.run([sys.executable, "-m", "polyproc", "nonsense"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "invalid choice: 'nonsense'" in result.stderr


# ``python -m polyproc demo ARGS`` with the workloads shrunk (as ``small``).
_SMALL_DEMO = """
import sys
from polyproc._cli import demo
demo.PRIMES_BELOW, demo.TINY_TASKS, demo.STDLIB_PATIENCE_S = 20_000, 300, 0.5
from polyproc.__main__ import main
sys.exit(main(["demo", *sys.argv[1:]]))
"""


def test_demo_shows_insights_and_writes_a_timeline(tmp_path):
    result = subprocess.run([sys.executable, "-c", _SMALL_DEMO, "--timeline", "demo.json"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    view = out[out.index("polyproc's own view"):].splitlines()
    # The same count as the timed sections, one worker lost and its task
    # retried; the replacement worker is listed if it started before the
    # (tiny) map ended.
    summary = re.fullmatch(r"2,262 primes; tasks: 32 completed, 0 failed, 1 retried; "
                           r"workers: (\d) started, 1 lost; wall time [\d.]+ s", view[1])
    assert summary, out
    started = int(summary[1])
    processes = os.cpu_count() or 1   # the demo's pool size
    assert started in (processes, processes + 1)
    assert view[2].split() == ["worker", "pid", "tasks", "working", "waiting",
                               "start-up", "ended"]
    workers = view[3:3 + started]
    assert sorted(w.split()[-1] for w in workers) == sorted(
        ["(SIGKILL)"] + ["running"] * (started - 1))
    rest = view[3 + started:]
    assert rest[0] == "slowest tasks:"
    assert all("count_primes_dying_once((" in line for line in rest[1:4])
    path = tmp_path / "demo.json"
    assert rest[4] == f"timeline: {path}"
    assert f"python -m polyproc plot {path}" in rest[5]
    events = json.loads(path.read_text())["traceEvents"]
    assert sum(e.get("cat") == "chunk" and not e["args"].get("lost") for e in events) == 32
    # (The others end "terminated (SIGTERM)": leaving ``with`` terminates.)
    assert [e["name"] for e in events if e["ph"] == "i" and e.get("cat") == "worker"
            and "lost" in e["name"]] == ["worker lost (SIGKILL)"]
