"""The benchmark harness, which lives in the package (``polyproc/_cli/harness.py``)
so that ``python -m polyproc bench`` has it in an installed polyproc."""
from polyproc._cli.harness import (Contender, Result, Scenario, report,
                                   run_scenario, timed)

__all__ = ["Contender", "Result", "Scenario", "report", "run_scenario", "timed"]
