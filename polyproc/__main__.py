"""``python -m polyproc COMMAND``: the command line.

Each command is a module ``polyproc/_cli/<command>.py`` with two functions,
``add_arguments(parser)`` (its options, on an ``argparse`` sub-parser) and
``main(args) -> int`` (the exit status).  Only the module of the command
given is imported, so that ``run`` starts a program without loading the
benchmark scenarios, and a command whose optional dependency is missing
(``plot`` needs matplotlib) breaks only itself.  A new command is one
module and one line of ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> its one-line help (the module is polyproc._cli.<command>).
COMMANDS: dict[str, str] = {
    "run": "run a Python program with multiprocessing and "
           "concurrent.futures patched to polyproc (polyproc.patch())",
    "bench": "run the benchmark scenarios with the stdlib and polyproc "
             "side by side and print the ratios",
    "demo": "run real work serially, with the stdlib and with polyproc, "
            "and print the times",
    "plot": "draw a timeline file (Pool(timeline=...)) as a PNG",
}


def main(argv: list[str] | None = None) -> int:
    """Parse *argv* (default: ``sys.argv[1:]``), run the command, return its status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m polyproc",
        description="polyproc's command line: python -m polyproc COMMAND --help "
                    "for a command's options.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    module = None
    for name, help_text in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(f"{__package__}._cli.{name}")
            module.add_arguments(sub)
    args = parser.parse_args(argv)
    assert module is not None  # argparse exits on a missing or unknown command
    status: int = module.main(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
