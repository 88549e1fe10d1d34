"""Makes docs/timeline.png: the demo's workload with one worker killed.

    PYTHONPATH=. python docs/timeline_example.py /tmp/run.json
    python -m polyproc plot /tmp/run.json -o docs/timeline.png

Three workers count the primes below 1,200,000 in 32 chunks (the demo's
``cpu_bound_map``); shortly after the eighth result the parent SIGKILLs one
worker in the middle of a task, the way the OOM killer would.  The task it was running is retried
(``retries=1``) on a replacement worker, and the map completes.
"""
import os
import signal
import sys
import time

import polyproc
from polyproc._cli.demo import PRIMES_BELOW, PRIMES_CHUNKS, count_primes


def main(path: str) -> None:
    n = PRIMES_BELOW
    chunks = [(i * n // PRIMES_CHUNKS, (i + 1) * n // PRIMES_CHUNKS)
              for i in range(PRIMES_CHUNKS)]
    with polyproc.Pool(3, timeline=path, insights=True) as pool:
        total = 0
        for done, count in enumerate(pool.imap(count_primes, chunks, chunksize=1,
                                               retries=1), 1):
            total += count
            if done == 8:
                time.sleep(0.1)  # into the worker's next task: it is blamed
                os.kill(pool._pool[1].pid, signal.SIGKILL)
        totals = pool.insights()["totals"]
    print(f"{total:,} primes; {totals['workers_lost']} worker lost, "
          f"{totals['retries']} task retried; timeline in {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "run.json")
