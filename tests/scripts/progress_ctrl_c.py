"""Ctrl-C during ``Pool.map(progress=True)``: what the bar shows after it.

``progress_ctrl_c.py METHOD``: maps 10 tasks on 2 workers; tasks 0-3
return at once, each later one runs a slow ``polyproc.progress`` loop (a
nested bar) and says "task started" on stdout once it has begun.
The test sends SIGINT to the whole process group (a terminal's Ctrl-C)
once a task has started; the script catches the KeyboardInterrupt, writes
"<<after>>" to stderr and prints the main bar's state as JSON on stdout.
"""
import json
import os
import signal
import sys
import time

import polyproc
from polyproc._pool import progress as progress_module


def task(x):
    if x >= 4:
        # A loop of its own (a nested bar in the parent), interrupted.
        for i in polyproc.progress(range(100), desc=f"task {x}"):
            if i == 0:
                os.write(1, b"task started\n")
            time.sleep(0.3)
    return x


def recording_bars(made: list):
    """Make every bar polyproc draws recordable (read, not changed)."""
    base = progress_module._progress_bar_class()

    class Recording(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    progress_module._progress_bar_class = lambda: Recording


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    made: list = []
    recording_bars(made)
    with polyproc.get_context(sys.argv[1]).Pool(2) as pool:
        try:
            pool.map(task, range(10), chunksize=1, progress=True)
        except KeyboardInterrupt:
            sys.stderr.flush()
            sys.stderr.write("<<after>>")
            sys.stderr.flush()
            bar = made[0]  # the call's; then its tasks' loops
            print(json.dumps({"n": bar.n, "total": bar.total, "closed": bar.disable,
                              "all_closed": all(b.disable for b in made)}),
                  flush=True)
        pool.terminate()
