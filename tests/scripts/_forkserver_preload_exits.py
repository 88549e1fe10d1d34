"""Imported by the fork server as a preload module: it exits at once.

``POLYPROC_TEST_PRELOAD_EXIT`` gives the exit code; 78 is the code the
fork server uses when the main module starts processes at import time
(what Python 3.12+ does when it preloads ``__main__``; 3.11 never does).
"""
import os

raise SystemExit(int(os.environ["POLYPROC_TEST_PRELOAD_EXIT"]))
