"""``python -m benchmarks [--repeat N] [--only WORD ...]``: run the scenarios."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import _harness


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--repeat", type=int, default=5,
                        help="repetitions per contender (median reported)")
    parser.add_argument("--only", nargs="*", default=[],
                        help="run scenarios whose name contains one of these words")
    args = parser.parse_args(argv)

    import benchmarks
    modules = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)
                     if m.name.startswith("bench_"))
    for mod_name in modules:
        module = importlib.import_module(f"benchmarks.{mod_name}")
        for scenario in module.scenarios():
            if args.only and not any(w in scenario.name for w in args.only):
                continue
            result = _harness.run_scenario(scenario, args.repeat)
            _harness.report(result)
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
