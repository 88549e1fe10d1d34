"""What a user's type checker sees of polyproc (``py.typed``).

A small user program is type-checked with mypy (``mypy.api.run``, the
package under test on its search path), strictly: every public name must
exist for the checker and have its precise type, never ``Any``.  mypy is a
test dependency (``pip install polyproc[test]``), so this test never skips.
"""
from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

import mypy.api

import polyproc

# Statements of a user's program.  ``assert_type`` fails the check unless
# the expression has exactly that type; an ``Any`` never matches a class.
USER_PROGRAM = """
import concurrent.futures
from typing import Any, Iterator

from typing_extensions import assert_type

import polyproc
import polyproc.connection
import polyproc.executor
import polyproc.managers
import polyproc.pool
import polyproc.process
import polyproc.queues


def square(x: int) -> int:
    return x * x


def takes_a_process(p: polyproc.Process) -> BaseException | None:
    return p.exception


def main() -> None:
    assert_type(polyproc.Pool(2), polyproc.pool.Pool)
    assert_type(polyproc.pool.Pool(2), polyproc.pool.Pool)
    assert_type(polyproc.get_context("spawn").Pool(2), polyproc.pool.Pool)
    with polyproc.Pool() as pool:
        assert_type(pool, polyproc.pool.Pool)
        assert_type(pool.map(square, range(3)), list[int])
        assert_type(pool.apply(square, (3,)), int)
        assert_type(pool.apply_async(square, (3,)).get(), int)
        assert_type(list(pool.imap(square, range(3))), list[int])
    with polyproc.Pool(2, insights=True, timeline="run.json",
                       timeline_events=1000) as pool:
        assert_type(pool.insights(), dict[str, Any])
        pool.timeline("now.json")
        assert_type(pool.stacks(), dict[int, str])
        assert_type(pool.map(square, range(3), progress=True), list[int])
    # A task's own progress bar: an iterator of the items it is given.
    assert_type(polyproc.progress(range(3), total=3, desc="items"), Iterator[int])
    with polyproc.pool.ThreadPool(2) as threads:
        assert_type(threads, polyproc.pool.ThreadPool)

    assert_type(polyproc.Queue(), polyproc.queues.Queue[Any])
    assert_type(polyproc.JoinableQueue(), polyproc.queues.JoinableQueue[Any])
    assert_type(polyproc.SimpleQueue(), polyproc.queues.SimpleQueue[Any])
    ints: polyproc.queues.Queue[int] = polyproc.Queue()
    assert_type(ints.get(), int)

    executor = polyproc.Executor()
    assert_type(executor, polyproc.executor.Executor)
    assert_type(executor.submit(square, 3), concurrent.futures.Future[int])
    assert_type(executor.stacks(timeout=0.5), dict[int, str])
    polyproc.Executor(hang_report=60.0)
    polyproc.Pool(hang_report=60)
    with polyproc.Executor(2) as executor:
        assert_type(list(executor.map(square, [1, 2])), list[int])
    with polyproc.Executor(2, insights=True, timeline=True) as executor:
        assert_type(executor.insights(), dict[str, Any])
        executor.timeline("now.json")
        assert_type(list(executor.map(square, [1, 2], progress=True)), list[int])
    # A polyproc context is a stdlib context for the stdlib's own APIs.
    concurrent.futures.ProcessPoolExecutor(mp_context=polyproc.get_context("spawn"))

    process = polyproc.Process(target=square, args=(3,))
    assert_type(process, polyproc.process.Process)
    takes_a_process(process)

    assert_type(polyproc.Manager(), polyproc.managers.SyncManager)
    with polyproc.Manager() as manager:
        assert_type(manager, polyproc.managers.SyncManager)
        shared = manager.dict()         # the methods register() adds
        shared["key"] = manager.list([1, 2])
        manager.Queue().put(1)
        with manager.Lock():
            pass

    assert_type(polyproc.Lock().locked(), bool)
    assert_type(polyproc.Pipe()[0], polyproc.connection.Connection)
    assert_type(polyproc.get_start_method(), str)
"""


def _mypy(tmp_path: Path, program: str) -> tuple[str, int]:
    """Type-check *program* as a user would, against the polyproc under test.

    Strict, as the strictest user (``no_implicit_reexport`` included: a
    name only ``__init__`` imports would be invisible).  Errors inside
    polyproc are ``make lint``'s business, not this test's: imports are
    followed silently.
    """
    (tmp_path / "user_program.py").write_text(program)
    package_parent = Path(polyproc.__file__).parent.parent
    config = tmp_path / "mypy.ini"
    config.write_text(textwrap.dedent(f"""\
        [mypy]
        strict = True
        follow_imports = silent
        mypy_path = {package_parent}
        cache_dir = {tmp_path / "cache"}
        """))
    stdout, stderr, status = mypy.api.run(
        ["--config-file", str(config), str(tmp_path / "user_program.py")])
    return stdout + stderr, status


def test_user_program_sees_every_public_name_with_its_type(tmp_path):
    output, status = _mypy(tmp_path, USER_PROGRAM)
    assert status == 0, output


# polyproc and its public modules (those of the stdlib's layout, and executor).
PUBLIC_MODULES = [
    "polyproc", "polyproc.process", "polyproc.context", "polyproc.pool",
    "polyproc.queues", "polyproc.managers", "polyproc.connection",
    "polyproc.synchronize", "polyproc.sharedctypes", "polyproc.shared_memory",
    "polyproc.dummy", "polyproc.util", "polyproc.reduction", "polyproc.heap",
    "polyproc.resource_tracker", "polyproc.spawn", "polyproc.executor",
]


def test_no_public_name_is_any(tmp_path):
    # Every name of each public module's __all__, as the checker sees it:
    # none missing (an error), none Any.
    names = [f"{module}.{name}" for module in PUBLIC_MODULES
             for name in importlib.import_module(module).__all__]
    program = "".join(f"import {module}\n" for module in PUBLIC_MODULES) + "".join(
        f"reveal_type({name})\n" for name in names)
    output, status = _mypy(tmp_path, program)
    assert status == 0, output      # no errors: every name exists
    revealed = [line.split("Revealed type is ", 1)[1].strip('"')
                for line in output.splitlines() if "Revealed type is" in line]
    assert len(revealed) == len(names), output
    anys = [name for name, shown in zip(names, revealed) if shown == "Any"]
    assert not anys, f"typed as Any: {anys}\n{output}"
