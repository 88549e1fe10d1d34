"""Helpers that make private implementation modules look public.

Like trio's ``fixup_module_metadata``: a class defined in ``polyproc._pool.api``
but exported as ``polyproc.pool.Pool`` reports ``polyproc.pool`` as its
module, so reprs, tracebacks and pickles name the public path.
"""
from __future__ import annotations

import types


def fixup_module_metadata(module_name: str, namespace: dict) -> None:
    """Set ``__module__`` of every public class/function in *namespace* to *module_name*."""
    seen: set[int] = set()

    def fix_one(qualname: str, name: str, obj: object) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        mod = getattr(obj, "__module__", None)
        if mod is not None and mod.startswith("polyproc."):
            obj.__module__ = module_name
            if isinstance(obj, type):
                for attr_name, attr_value in obj.__dict__.items():
                    fix_one(qualname + "." + attr_name, attr_name, attr_value)

    for name, obj in list(namespace.items()):
        if not name.startswith("_") and isinstance(obj, (type, types.FunctionType)):
            fix_one(name, name, obj)
