"""What polyproc adds, under every start method: fork, forkserver, spawn.

Python 3.14 made *forkserver* the default start method on Linux (it was
fork), so code that worked with polyproc's additions under fork must keep
working there.  The stdlib under forkserver or spawn cannot send a lambda
to a worker, cannot pass a ``Queue`` to a Pool task, pickles a large NumPy
array through a pipe, and has no ``p.exception``.  polyproc: each works
under all three (``ctx`` fixture), and a program whose *default* start
method is forkserver, as on 3.14, uses them through the top-level API.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import _compat_helpers as helpers
import _zero_copy_helpers
import polyproc
from polyproc import RemoteTraceback
from polyproc._transport import shm_cache as _shm_pool

WAIT = 30
BIG = 2 ** 21          # float64 items: 16 MiB, far above the zero-copy threshold


@pytest.fixture(autouse=True)
def no_leaks():
    """Every shared-memory segment these tests make is gone after each
    (as tests/test_zero_copy.py checks): none is left to later tests.

    Only new segments count: one that an earlier test (another module's)
    left to the tracker may be swept while this test runs.
    """
    gc.collect()        # what earlier tests left behind, as test_serialization.py
    _shm_pool.trim()
    before = _zero_copy_helpers.our_segments()
    yield
    gc.collect()        # received arrays die: their segments become FREE
    _shm_pool.trim()    # recycled FREE segments are unlinked
    _zero_copy_helpers.wait_for_no_new_segments(before, timeout=5)


def test_lambdas_and_closures_as_tasks(ctx):
    """stdlib: a lambda or closure sent to a Pool or executor worker cannot
    be pickled (``PicklingError``, ``AttributeError``).  polyproc: sent by
    value (cloudpickle), as a task and as an initializer."""
    offset = 10
    with ctx.Pool(2, initializer=lambda: None) as pool:
        assert pool.map(lambda x: x + offset, range(4)) == [10, 11, 12, 13]
        assert pool.apply(lambda: offset * 3) == 30
    with polyproc.Executor(1, mp_context=ctx) as ex:
        assert ex.submit(lambda: offset * 2).result(timeout=WAIT) == 20


def test_queue_passed_into_pool_tasks(ctx):
    """stdlib: ``RuntimeError: Queue objects should only be shared between
    processes through inheritance``.  polyproc: a Queue travels in a task's
    arguments."""
    q = ctx.Queue()
    with ctx.Pool(2) as pool:
        assert sorted(pool.map(helpers.put_square, [(q, i) for i in range(5)])) == \
            list(range(5))
    assert sorted(q.get(timeout=WAIT) for _ in range(5)) == [0, 1, 4, 9, 16]


def test_large_numpy_arrays_travel_through_shared_memory(ctx):
    """stdlib: a large array is pickled through the pipe (copied byte by
    byte).  polyproc: its buffer travels in shared memory, to a Pool task
    and back, and through a Queue."""
    arr = np.arange(BIG, dtype=np.float64)
    with ctx.Pool(1) as pool:
        kind, owner, total = pool.apply(helpers.buffer_backing, (arr,))
    assert (kind, owner, total) == ("memoryview", "mmap", float(arr.sum()))
    q = ctx.Queue()
    p = ctx.Process(target=helpers.put_large_array, args=(q, BIG))
    p.start()
    got = q.get(timeout=WAIT)
    p.join(WAIT)
    assert np.array_equal(got, arr)
    assert helpers.buffer_backing(got)[:2] == ("memoryview", "mmap")


def test_process_exception(ctx):
    """stdlib: the exception ``run()`` raised is printed in the child and
    lost.  polyproc: ``p.exception`` after ``join()``, with the child's
    traceback as ``__cause__``."""
    p = ctx.Process(target=helpers.fail_with_value_error, args=("boom",))
    p.start()
    p.join(WAIT)
    assert p.exitcode == 1
    assert isinstance(p.exception, ValueError) and p.exception.args == ("boom",)
    assert isinstance(p.exception.__cause__, RemoteTraceback)


PROGRAM = textwrap.dedent("""
    import numpy as np
    import polyproc
    import _compat_helpers as helpers

    if __name__ == "__main__":
        polyproc.set_start_method("forkserver")     # Python 3.14's default
        offset = 1
        q = polyproc.Queue()
        with polyproc.Pool(2) as pool:
            assert pool.map(lambda x: x + offset, range(3)) == [1, 2, 3]
            pool.map(helpers.put_square, [(q, i) for i in range(3)])
            arr = np.ones(2 ** 21)
            assert pool.apply(helpers.buffer_backing, (arr,))[:2] == ("memoryview", "mmap")
        assert sorted(q.get(timeout=30) for _ in range(3)) == [0, 1, 4]
        with polyproc.Executor(1) as ex:
            assert ex.submit(lambda: offset).result(timeout=30) == 1
        p = polyproc.Process(target=helpers.fail_with_value_error, args=("x",))
        p.start()
        p.join(30)
        assert isinstance(p.exception, ValueError)
        assert polyproc.get_start_method() == "forkserver"
        print("ok")
""")


def test_a_program_whose_default_start_method_is_forkserver(tmp_path):
    """stdlib 3.14 on Linux: ``multiprocessing.Pool()`` etc. start workers
    with forkserver unless told otherwise.  polyproc: its additions work
    through the top-level API (``polyproc.Pool``, ``Queue``, ``Executor``,
    ``Process``) with forkserver as the default start method."""
    script = tmp_path / "forkserver_default.py"
    script.write_text(PROGRAM)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(polyproc.__file__)),
         os.path.dirname(__file__)]))
    out = subprocess.run([sys.executable, str(script)], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok"]
