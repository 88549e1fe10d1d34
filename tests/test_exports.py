import importlib
import multiprocessing

import pytest

import polyproc


def test_every_stdlib_name_is_exported():
    missing = set(multiprocessing.__all__) - set(polyproc.__all__)
    assert not missing
    for name in multiprocessing.__all__:
        assert getattr(polyproc, name) is not None


def test_stdlib_names_are_the_default_contexts():
    # As multiprocessing/__init__.py binds them: the default context's bound
    # methods (so set_start_method() decides what polyproc.Pool() makes),
    # classes and exceptions, the same objects.
    default = polyproc.context._default_context
    for name in multiprocessing.__all__ + ["Executor"]:
        assert getattr(polyproc, name) == getattr(default, name), name
    assert polyproc.Pool.__self__ is default


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
