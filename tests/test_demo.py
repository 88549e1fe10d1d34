"""polyproc._cli.demo and ``python -m polyproc demo``, shrunk to run in a second."""
from __future__ import annotations

import io
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
