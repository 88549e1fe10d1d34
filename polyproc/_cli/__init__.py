"""The command line (``python -m polyproc``): a client of the public API."""
