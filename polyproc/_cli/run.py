"""``python -m polyproc run [OPTIONS] SCRIPT [ARGS...]`` (or ``-m MODULE``).

Runs an unmodified program with ``polyproc.patch()`` applied first, so that
its ``multiprocessing`` Pools, Processes, Queues and Managers and its
``concurrent.futures.ProcessPoolExecutor`` are polyproc's, in the program
and in the libraries it calls (polyproc/monkey.py says what is patched).

The program must not be able to tell it from ``python SCRIPT ARGS``:

* ``sys.argv`` is ``[SCRIPT, *ARGS]`` (``-m``: the module's file, as
  ``python -m`` sets it); ``sys.path[0]`` is the script's directory (the
  working directory for ``-m``);
* the code runs in a fresh module that *is* ``sys.modules["__main__"]``,
  with ``__name__ == "__main__"`` and ``__file__`` set, and stays there
  after it ends, as Python's own ``__main__`` does.  That is what spawn and
  forkserver children need: they import the main module again from
  ``__main__.__file__`` (or ``__spec__.name``), and pickled functions of
  the script name ``__main__``.  (``runpy.run_path`` puts its module in
  ``sys.modules`` only while the code runs, and cProfile's ``exec`` in a
  dict not at all: spawn children fail to find the script's functions.)
* output and exit status are the program's: ``sys.exit(n)`` exits with
  *n*; an uncaught exception goes to ``sys.excepthook`` with the traceback
  from the program's first frame (none of polyproc's) and exits with 1.
  Except, with ``--cluster``, an uncaught ``ClusterError``: the cluster
  given on the command line is at fault (its address is wrong, its
  scheduler went away), not the program, so its message alone is printed
  (``python -m polyproc run: cannot reach the Dask scheduler at ...``),
  with status 1; a traceback through the program would only hide it.

A script that cannot be opened exits with status 2 and Python's message;
a module that cannot be found, with status 1 (as ``python -m`` does).
"""
from __future__ import annotations

import argparse
import builtins
import importlib.util
import os
import sys
import types
from typing import Any, NoReturn

import polyproc

__all__ = ["add_arguments", "main"]

PROG = "python -m polyproc run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``run``; everything after SCRIPT (or -m MODULE) is the program's."""
    parser.usage = (f"{PROG} [-h] [--timeline FILE] [--cluster ADDRESS] "
                    "(SCRIPT | -m MODULE) [ARGS ...]")
    parser.add_argument("--timeline", metavar="FILE",
                        help="write each Pool's timeline to FILE (Chrome trace JSON; "
                             "polyproc.patch(timeline=FILE))")
    parser.add_argument("--cluster", metavar="ADDRESS",
                        help="run the program's Pools on the Dask cluster at ADDRESS "
                             "(polyproc.patch(cluster=ADDRESS))")
    parser.add_argument("-m", dest="module", action="store_true",
                        help="TARGET is a module to run as 'python -m' does")
    parser.add_argument("target", metavar="SCRIPT",
                        help="the program: a Python file (or, with -m, a module name)")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="the program's arguments, passed on unchanged")


def main(args: argparse.Namespace) -> int:
    """Patch, then run the program; return 0 when it ends normally.

    ``SystemExit`` raised by the program propagates (its status is the
    process's); any other uncaught exception is reported as Python does
    and becomes status 1.
    """
    try:
        # Absolute: the program may change its working directory.
        timeline = os.path.abspath(args.timeline) if args.timeline else None
        polyproc.patch(cluster=args.cluster, timeline=timeline)
    except TypeError as error:  # the keyword is not available in this polyproc
        _fail(2, str(error))
    code, module = (_module_code(args.target) if args.module
                    else _script_code(args.target))
    # argv[0]: the script as given, or the module's file (as python -m).
    program = (module.__file__ or args.target) if args.module else args.target
    sys.argv[:] = [program, *args.args]
    if not args.module:
        # ``python SCRIPT`` puts the script's directory first, in place of
        # the working directory that ``python -m polyproc`` put there.
        sys.path[0] = os.path.dirname(os.path.realpath(args.target))
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module
    return _execute(code, module, cluster=args.cluster)


def _execute(code: types.CodeType, module: types.ModuleType,
             cluster: str | None = None) -> int:
    try:
        exec(code, module.__dict__)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        raise   # Python exits by SIGINT then; let it do so
    except BaseException as exc:
        if cluster is not None and isinstance(exc, polyproc.ClusterError):
            # The cluster of --cluster is at fault (the module docstring).
            print(f"{PROG}: the program's pool cannot run on the cluster {cluster}: "
                  f"{exc}", file=sys.stderr)
            return 1
        # The traceback from the program's first frame: this frame is its head.
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        exc = exc.with_traceback(tb)
        sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
        if sys.version_info >= (3, 12):
            sys.last_exc = exc
        sys.excepthook(type(exc), exc, tb)
        return 1
    return 0


def _script_code(path: str) -> tuple[types.CodeType, types.ModuleType]:
    """The compiled script and the fresh ``__main__`` module it will run in."""
    try:
        with open(path, "rb") as file:   # bytes: compile() honours a coding cookie
            source = file.read()
    except OSError as error:
        _fail(2, f"can't open file {os.path.abspath(path)!r}: "
                 f"[Errno {error.errno}] {error.strerror}")
    filename = os.path.abspath(path)
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as error:   # reported as Python reports it: no polyproc frames
        sys.excepthook(type(error), error, None)
        raise SystemExit(1) from None
    return code, _main_module(__file__=filename, __spec__=None, __package__=None,
                              __loader__=None, __cached__=None)


def _module_code(name: str) -> tuple[types.CodeType, types.ModuleType]:
    """The code of module *name* (of ``name.__main__`` for a package), as ``python -m``."""
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            spec = importlib.util.find_spec(name + ".__main__")
    except (ImportError, ValueError) as error:
        _fail(1, f"Error while finding module specification for {name!r} "
                 f"({type(error).__name__}: {error})")
    if spec is None or spec.loader is None:
        _fail(1, f"No module named {name}")
    code = spec.loader.get_code(spec.name)  # type: ignore[attr-defined]
    if code is None:
        _fail(1, f"No code object available for {name}")
    return code, _main_module(__file__=spec.origin, __spec__=spec,
                              __package__=spec.parent, __loader__=spec.loader,
                              __cached__=spec.cached)


def _main_module(**attributes: Any) -> types.ModuleType:
    module = types.ModuleType("__main__")
    module.__dict__.update(attributes, __builtins__=builtins)
    return module


def _fail(status: int, message: str) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    raise SystemExit(status)
