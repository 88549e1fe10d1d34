"""A program whose pool stalls while progress bars are drawn:
``hang_report_bars.py METHOD``.

Two workers, ``progress=True``; each task loops over ``polyproc.progress``
(a nested bar), and task 1 stalls 1 s in the middle of its loop, with
``hang_report=0.3``: the report is written while the call's bar and a
nested bar are on the screen.  stderr is what a terminal would get.
"""
import sys
import time

import polyproc


def loop(i):
    for k in polyproc.progress(range(20), desc=f"loop {i}"):
        time.sleep(1.0 if (i, k) == (1, 10) else 0.005)  # task 1 STALLS HERE
    return i


if __name__ == "__main__":
    with polyproc.get_context(sys.argv[1]).Pool(2, hang_report=0.3) as pool:
        print(pool.map(loop, range(4), progress=True, chunksize=1))
