"""A bounded soak: Pool and Executor calls while workers are SIGKILLed every
few milliseconds (the code is in tests/_soak.py; ``make soak`` runs it longer,
on every start method).  Select it with ``-m soak``, leave it out with
``-m 'not soak'``; ``POLYPROC_SOAK_SECONDS`` sets its budget (default 20 s).
"""
from __future__ import annotations

import os

import pytest

import _soak

SECONDS = float(os.environ.get("POLYPROC_SOAK_SECONDS", "20"))


@pytest.mark.soak
@pytest.mark.timeout(2 * SECONDS + 60)
def test_every_input_has_one_outcome_and_nothing_is_left_over():
    report = _soak.run_soak(SECONDS)
    print(report.line())
    details = "\n".join(report.details[:20])
    assert report.kills >= SECONDS, report.line()  # the killer did its job
    assert report.results > 0, report.line()
    assert not report.hung, details
    assert not report.lost and not report.duplicated, details
    assert not report.wrong, details
    # Only WorkerLostError naming its own input (retries used up) may replace
    # a result: no ProcessError of a broken pool, no error of another input.
    assert not report.failed, details
    assert not any(report.leaked.values()), (
        f"left over after the pools closed: {report.leaked} "
        f"(segments: /dev/shm entries of this session)\n{details}")
