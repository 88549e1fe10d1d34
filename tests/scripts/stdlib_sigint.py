"""An unmodified stdlib program that a test interrupts with Ctrl-C.

``stdlib_sigint.py METHOD pool|executor``: a Pool.map or a
ProcessPoolExecutor.map (in ``with``) of tasks that sleep; each task prints
"task started" first, and the test then sends SIGINT to the program's
process group, as a terminal's Ctrl-C does.  The program must end at once
with KeyboardInterrupt, as it does without polyproc, leaving no process.
"""
import concurrent.futures
import multiprocessing
import os
import sys
import time


def sleepy(x):
    sys.stdout.write(f"task started {os.getpid()}\n")   # one write: workers share the pipe
    sys.stdout.flush()
    time.sleep(120)
    return x


def main(method, kind):
    multiprocessing.set_start_method(method)
    if kind == "pool":
        with multiprocessing.Pool(2) as pool:
            print(pool.map(sleepy, range(4), chunksize=1))
    else:
        with concurrent.futures.ProcessPoolExecutor(2) as executor:
            print(list(executor.map(sleepy, range(4))))


if __name__ == "__main__":
    main(*sys.argv[1:])
