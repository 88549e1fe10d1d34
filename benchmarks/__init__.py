"""polyproc's benchmark harness: ``make bench`` / ``python -m benchmarks``."""
