"""Task functions and exception classes for tests/test_fidelity.py.

Importable by name, so that spawn and forkserver workers find them.
"""
from __future__ import annotations

import sys
import threading

BIG = 1 << 20  # characters in the message of big_message()


class TwoArgError(Exception):
    """Its __init__ takes other arguments than its args: plain pickle
    rebuilds it as TwoArgError(*args), which raises TypeError."""

    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def raise_two_arg(code):
    error = TwoArgError(code, "needs two arguments")
    error.extra = {"kept": [1, 2]}
    if sys.version_info >= (3, 11):
        error.add_note("a note from the worker")
    raise error


def big_message(_=None):
    raise ValueError("x" * BIG)


def identity(x):
    return x


def return_lock(_=None):
    return threading.Lock()


class RefusesToPickle:
    """Its own pickling code raises RuntimeError (not a pickle error)."""

    def __reduce__(self):
        raise RuntimeError("RefusesToPickle cannot be pickled")


def return_refuses_to_pickle(_=None):
    return RefusesToPickle()


def _refuse_to_load(where):
    raise RuntimeError(f"refuses to be unpickled ({where})")


class FailsToUnpickle:
    """Pickles fine; unpickling it raises, on the receiving side."""

    def __init__(self, where):
        self.where = where

    def __reduce__(self):
        return (_refuse_to_load, (self.where,))


def return_fails_to_unpickle(_=None):
    return FailsToUnpickle("parent")
