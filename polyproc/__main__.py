"""``python -m polyproc demo``: the command line.

One sub-command for now, ``demo`` (see ``_cli/demo.py``), which ``make demo``
runs.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polyproc")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run real work serially, with the stdlib "
                        "and with polyproc, and print the times")
    from ._cli import plot
    plot.add_arguments(commands.add_parser(
        "plot", help="draw a timeline file (Pool(timeline=...)) as a PNG"))
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._cli.demo import main as demo_main
        return demo_main()
    if args.command == "plot":
        return plot.main(args)
    return 2  # unreachable: argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
