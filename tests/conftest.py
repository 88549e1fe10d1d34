"""Shared fixtures: every test body can be run on each start method."""
from __future__ import annotations

import pytest

import polyproc

START_METHODS = [m for m in ("fork", "forkserver", "spawn")
                 if m in polyproc.get_all_start_methods()]


@pytest.fixture(params=START_METHODS)
def ctx(request):
    """A polyproc context for each start method."""
    return polyproc.get_context(request.param)


@pytest.fixture(params=["fork", "spawn"])
def ctx_fs(request):
    """fork and spawn only: for slower tests where forkserver adds nothing new."""
    return polyproc.get_context(request.param)
