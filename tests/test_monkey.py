"""polyproc.patch() and unpatch() in this process (polyproc/monkey.py).

What a patched program and its children see is tested through the command
line, in subprocesses (tests/test_cli.py); here, the names themselves, the
defaults' path, and that unpatch() leaves the stdlib exactly as it was.
"""
from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import inspect
import multiprocessing
import multiprocessing.pool
import multiprocessing.spawn
import subprocess
import sys
import textwrap

import pytest

import polyproc
import polyproc.executor
import polyproc.pool
from polyproc import context as _context
from polyproc import monkey

# (module, name) -> what patch() puts there.
EXPECTED = {
    (multiprocessing, "Process"): polyproc.Process,
    (multiprocessing, "Pool"): polyproc.Pool,
    (multiprocessing, "Queue"): polyproc.Queue,
    (multiprocessing, "SimpleQueue"): polyproc.SimpleQueue,
    (multiprocessing, "JoinableQueue"): polyproc.JoinableQueue,
    (multiprocessing, "Manager"): polyproc.Manager,
    (multiprocessing, "Pipe"): polyproc.Pipe,
    (multiprocessing, "get_context"): polyproc.get_context,
    (multiprocessing.pool, "Pool"): polyproc.pool.Pool,
    (multiprocessing.pool, "ThreadPool"): polyproc.pool.ThreadPool,
}
# Patched with a subclass of polyproc.executor.Executor under the stdlib's name.
EXECUTOR_NAMES = [(concurrent.futures, "ProcessPoolExecutor"),
                  (concurrent.futures.process, "ProcessPoolExecutor")]


def _is_polyprocs_executor(cls: type) -> bool:
    return (issubclass(cls, polyproc.executor.Executor)
            and cls.__name__ == cls.__qualname__ == "ProcessPoolExecutor")


@pytest.fixture
def patched():
    polyproc.patch()
    try:
        yield
    finally:
        polyproc.unpatch()


def _snapshot() -> dict:
    return {key: key[0].__dict__.get(key[1], "absent")
            for key in [*EXPECTED, *EXECUTOR_NAMES,
                        (multiprocessing.spawn, "get_preparation_data")]}


def test_patch_makes_every_name_polyprocs_and_unpatch_restores_it():
    before = _snapshot()
    assert not monkey.is_patched()
    polyproc.patch()
    try:
        polyproc.patch()   # idempotent
        assert monkey.is_patched()
        for (module, name), ours in EXPECTED.items():
            assert getattr(module, name) is ours, f"{module.__name__}.{name}"
        # what the patched names make
        assert type(multiprocessing.get_context("spawn")) is type(polyproc.get_context("spawn"))
        assert issubclass(multiprocessing.Process, polyproc.process.PolyProcess)
        from concurrent.futures import ProcessPoolExecutor
        assert _is_polyprocs_executor(ProcessPoolExecutor)
        # one class under both names
        assert concurrent.futures.process.ProcessPoolExecutor is ProcessPoolExecutor
        with ProcessPoolExecutor(1) as executor:   # as the stdlib's: a program may show it
            assert type(executor).__name__ == "ProcessPoolExecutor"
    finally:
        polyproc.unpatch()
    assert not monkey.is_patched()
    assert _snapshot() == before
    polyproc.unpatch()   # a no-op now
    assert _snapshot() == before


def test_the_executor_takes_process_pool_executors_signature():
    std = inspect.signature(concurrent.futures.process.ProcessPoolExecutor)
    ours = inspect.signature(polyproc.executor.Executor).parameters
    for name, parameter in std.parameters.items():
        assert name in ours
        assert (ours[name].kind, ours[name].default) == (parameter.kind, parameter.default)


def test_spawn_preparation_data_carries_the_patch_only_while_patched(patched):
    data = multiprocessing.spawn.get_preparation_data("child")
    assert monkey.PREPARATION_KEY in data
    # What the child runs when it unpickles it: patch(), in the child.
    function, args = data[monkey.PREPARATION_KEY].__reduce__()
    assert function is monkey._patch_in_child and args == ({},)
    polyproc.unpatch()
    assert monkey.PREPARATION_KEY not in multiprocessing.spawn.get_preparation_data("x")


@pytest.mark.parametrize("keyword", ["cluster", "timeline"])
def test_a_keyword_the_pool_does_not_take_is_refused_and_nothing_is_patched(
        keyword, monkeypatch):
    # A polyproc whose Pool does not take the keyword (before the cluster
    # backend or the timeline existed): the keyword out of Pool's signature.
    signature = inspect.signature(polyproc.pool.Pool)
    monkeypatch.setattr(polyproc.pool.Pool, "__signature__", signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name != keyword]),
        raising=False)
    before = _snapshot()
    with pytest.raises(TypeError, match=f"polyproc.patch\\({keyword}=...\\): .* "
                                        "is not available in this version"):
        polyproc.patch(**{keyword: "x"})
    assert _snapshot() == before and not monkey.is_patched()


def test_each_pool_gets_its_own_timeline_file(tmp_path):
    # Numbered in the order pools are made, Pools and Executors alike; a
    # pool given its own timeline= takes no number.
    polyproc.patch(timeline=tmp_path / "run.json")
    try:
        with multiprocessing.Pool(1) as pool:
            pool.apply(abs, (-1,))
        with multiprocessing.Pool(1, timeline=tmp_path / "mine.json") as pool:
            pool.apply(abs, (-1,))
        with polyproc.Executor(1) as executor:
            executor.submit(abs, -1).result()
    finally:
        polyproc.unpatch()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mine.json", "run-2.json", "run.json"]


def test_defaults_reach_pools_and_executors_made_by_every_patched_path(patched):
    # With a keyword every Pool and Executor takes (an invalid value, so
    # that it shows without starting a worker); patch() sets only cluster=
    # and timeline=, which this Pool may not take.
    bad = {"max_memory_per_child": 0}
    _context._factory_defaults["Pool"] = dict(bad)
    _context._factory_defaults["Executor"] = dict(bad)
    pool_class = monkey._with_defaults(polyproc.pool.Pool, "Pool")
    executor_class = monkey._with_defaults(polyproc.executor.Executor, "Executor")
    assert issubclass(pool_class, polyproc.pool.Pool)
    assert pool_class.__name__ == "Pool"
    with pytest.raises(ValueError, match="max_memory_per_child"):
        pool_class(1)
    with pytest.raises(ValueError, match="max_memory_per_child"):
        executor_class(1)
    try:
        with pytest.raises(ValueError, match="max_memory_per_child"):
            multiprocessing.Pool(1)
        with pytest.raises(ValueError, match="max_memory_per_child"):
            multiprocessing.get_context("fork").Pool(1)
        with pytest.raises(ValueError, match="max_memory_per_child"):
            polyproc.Executor(1)
        # the call's own keyword wins
        with multiprocessing.Pool(1, max_memory_per_child=2**40) as pool:
            assert pool.apply(abs, (-3,)) == 3
    finally:
        polyproc.unpatch()
    assert _context._factory_defaults == {"Pool": {}, "Executor": {}}
    assert monkey._with_defaults(polyproc.pool.Pool, "Pool") is polyproc.pool.Pool


# -- modules imported after patch() (in a fresh interpreter) ---------------------

def _fresh(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok", result.stdout


def test_patch_imports_nothing_heavy_and_patches_modules_imported_later():
    # A spawned worker of a patched program calls patch() at start-up:
    # it must not pay for the pool, executor and concurrent.futures modules.
    _fresh("""
        import sys
        import polyproc
        heavy = {"concurrent.futures", "concurrent.futures.process",
                 "multiprocessing.pool", "polyproc._pool.api", "polyproc.executor"}
        assert not heavy & set(sys.modules), heavy & set(sys.modules)
        polyproc.patch()
        assert not heavy & set(sys.modules), heavy & set(sys.modules)
        import concurrent.futures
        from concurrent.futures.process import ProcessPoolExecutor
        import polyproc.executor
        assert ProcessPoolExecutor is concurrent.futures.ProcessPoolExecutor
        assert issubclass(ProcessPoolExecutor, polyproc.executor.Executor)
        assert ProcessPoolExecutor.__name__ == "ProcessPoolExecutor"
        from multiprocessing.pool import Pool, ThreadPool
        import polyproc.pool
        assert (Pool, ThreadPool) == (polyproc.pool.Pool, polyproc.pool.ThreadPool)
        # every target patched: the import hook is gone
        assert not any(type(f).__module__ == "polyproc.monkey" for f in sys.meta_path)
        print("ok")
        """)


def test_a_module_polyproc_itself_imports_first_is_patched_too():
    # polyproc.Executor() imports polyproc.executor, which imports
    # concurrent.futures: patched once polyproc.executor is complete.
    _fresh("""
        import polyproc
        polyproc.patch()
        polyproc.Executor(1).shutdown()
        import concurrent.futures, polyproc.executor
        assert issubclass(concurrent.futures.ProcessPoolExecutor, polyproc.executor.Executor)
        polyproc.unpatch()
        from concurrent.futures.process import ProcessPoolExecutor
        assert concurrent.futures.ProcessPoolExecutor is ProcessPoolExecutor
        assert ProcessPoolExecutor.__module__ == "concurrent.futures.process"
        print("ok")
        """)
