"""Shared fixtures: every test body can be run on each start method.

Also the guard against forks of a multi-threaded pytest process: Python
3.12+ warns (``DeprecationWarning: This process ... is multi-threaded, use
of fork() may lead to deadlocks in the child``) when a process forks while
other threads run, and a test that leaves a thread behind made every later
fork Pool warn.  Any such warning that a test does not expect (with
:func:`expect_fork_warning`) fails the run, naming the test.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from multiprocessing import resource_sharer

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


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """The scheduler address of a real Dask cluster, one for the whole run.

    A ``dask scheduler`` and a ``dask worker --nworkers 2 --nthreads 1``
    (with nannies) on 127.0.0.1, as subprocesses (tests/_cluster.py);
    skipped where Dask is not installed.
    """
    pytest.importorskip("distributed")
    from _cluster import start_cluster, stop_cluster
    cluster = start_cluster(tmp_path_factory.mktemp("dask"))
    yield cluster.address
    stop_cluster(cluster)


def _uses_a_cluster(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return (item.path.name.startswith("test_cluster")
            or "dask_cluster" in getattr(item, "fixturenames", ())
            # a parameter that asks for the cluster by getfixturevalue
            or (callspec is not None
                and any(isinstance(value, str) and value == "dask"
                        for value in callspec.params.values())))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The cluster tests run last.  A process that has used a Dask client
    # keeps distributed's threads (its IO loop) and tblib's exception
    # reducers for good: every later fork Pool would be made in a
    # multi-threaded process (Python 3.12+ warns) and the tests of the
    # single-threaded path could not run as such.  Their relative order is
    # kept.
    items.sort(key=_uses_a_cluster)


# -- forks of a multi-threaded process ------------------------------------------

# What Python 3.12+ says when a process that runs other threads forks
# (os.fork() in Modules/posixmodule.c).
MULTI_THREADED_FORK = "is multi-threaded, use of fork()"


@contextlib.contextmanager
def expect_fork_warning(required: bool = True) -> Iterator[None]:
    """Around a fork that a test makes on purpose while another thread runs
    (a child that inherits a live pool): on Python 3.12+, checks that the
    fork warned and keeps the warning from the guard; a no-op before 3.12,
    which does not warn.  A child forked in the block must exit in it
    (``os._exit``): leaving it would run the parent's check in the child.

    ``required=False`` where whether the block forks is not the test's
    choice (a program's ``Manager()`` forks only under the fork start
    method): the warning is kept from the guard, and its absence is no
    failure.
    """
    if sys.version_info < (3, 12):
        yield
        return
    if required:
        with pytest.warns(DeprecationWarning, match=r"is multi-threaded, use of fork\(\)"):
            yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"This process .* is multi-threaded",
                                DeprecationWarning)
        yield


@pytest.fixture(autouse=True)
def _stop_the_stdlib_resource_sharer() -> Iterator[None]:
    # Pickling a socket or a Connection in this process (test_serialization)
    # starts the stdlib's resource sharer, a daemon thread that serves the
    # duplicated fd to whoever unpickles it and lives until the process
    # ends: every later fork Pool of the run would fork a multi-threaded
    # process.  Stopping it drops the fds still registered, which no test
    # needs once it has ended.
    yield
    sharer = resource_sharer._resource_sharer
    if sharer._thread is not None:
        resource_sharer.stop(timeout=10)


def _system_threads() -> set[int]:
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:  # not Linux
        return set()


@pytest.fixture(autouse=True)
def _ended_threads_have_left_the_system() -> Iterator[None]:
    # Python 3.12+ counts the system's threads when it decides to warn at a
    # fork.  A thread a test started and did not join (or one joined on
    # 3.12, whose join() returns first) may still be exiting when the next
    # test forks: wait, bounded, until every system thread that appeared
    # during the test belongs to a live Python thread.  (polyproc's own
    # join() waits so itself: fork_pause.join_os_thread.)
    before = _system_threads()
    yield
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        live = {t.native_id for t in threading.enumerate()}
        if not _system_threads() - before - live:
            return
        time.sleep(0.001)


_unexpected_fork_warnings: list[str] = []


def pytest_warning_recorded(warning_message: warnings.WarningMessage, when: str,
                            nodeid: str, location: tuple[str, int, str] | None) -> None:
    if MULTI_THREADED_FORK in str(warning_message.message):
        where = f"{warning_message.filename}:{warning_message.lineno}"
        _unexpected_fork_warnings.append(f"{nodeid or '(' + when + ')'} ({where})")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A warning does not fail its test; the run fails at the end instead.
    # Not an error raised from os.fork(): that would leave the child running.
    if _unexpected_fork_warnings and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _unexpected_fork_warnings:
        return
    terminalreporter.section("forks of a multi-threaded process", sep="=", red=True)
    terminalreporter.line(
        f"{len(_unexpected_fork_warnings)} fork(s) warned '{MULTI_THREADED_FORK}' "
        "(Python 3.12+): a thread outlived its test, or a test forks on purpose "
        "without expect_fork_warning() (tests/conftest.py).  The run fails.")
    for entry in _unexpected_fork_warnings:
        terminalreporter.line(f"  {entry}")
