"""Start a pool, print the workers' pids, then block in map until killed."""
import sys
import time

import polyproc


def sleepy(x):
    time.sleep(30)
    return x


if __name__ == "__main__":
    pool = polyproc.get_context(sys.argv[1]).Pool(2)
    print(" ".join(str(p.pid) for p in pool._pool), flush=True)
    pool.map(sleepy, range(4))
