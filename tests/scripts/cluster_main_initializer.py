"""An initializer and a task defined in ``__main__``, run on a Dask cluster.

Both travel by value (cloudpickle); the task must see what the initializer
set (Ray's Pool does not: ray#37705).  Usage: python this.py <scheduler address>
"""
import sys

import polyproc

STATE = "not initialized"


def init(value):
    global STATE
    STATE = value


def read(_):
    return STATE


if __name__ == "__main__":
    with polyproc.Pool(cluster=sys.argv[1], initializer=init,
                       initargs=("from the initializer",)) as pool:
        print(pool.map(read, range(2), chunksize=1))
