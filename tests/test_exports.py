import importlib
import multiprocessing

import pytest

import polyproc


def test_every_stdlib_name_is_exported():
    missing = set(multiprocessing.__all__) - set(polyproc.__all__)
    assert not missing
    for name in multiprocessing.__all__:
        assert getattr(polyproc, name) is not None


@pytest.mark.parametrize("mod", [
    "process", "context", "pool", "queues", "managers", "connection",
    "synchronize", "sharedctypes", "shared_memory", "dummy", "util",
    "reduction", "heap", "resource_tracker", "spawn"])
def test_submodules_mirror_stdlib(mod):
    ours = importlib.import_module(f"polyproc.{mod}")
    std = importlib.import_module(f"multiprocessing.{mod}")
    for name in getattr(std, "__all__", []):
        assert hasattr(ours, name), f"polyproc.{mod}.{name} missing"


def test_start_method_is_shared_with_stdlib():
    assert polyproc.get_start_method() == multiprocessing.get_start_method()
    assert set(polyproc.get_all_start_methods()) == set(multiprocessing.get_all_start_methods())


def test_get_context_returns_polyproc_classes():
    for method in polyproc.get_all_start_methods():
        ctx = polyproc.get_context(method)
        assert ctx.Process.__module__ == "polyproc.process"
        assert ctx.get_start_method() == method
    with pytest.raises(ValueError):
        polyproc.get_context("no-such-method")
