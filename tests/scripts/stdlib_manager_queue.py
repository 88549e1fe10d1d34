"""An unmodified stdlib program: producer and consumer Processes on a
``multiprocessing.Manager().Queue()``, a managed dict, then a Pool; exits 3.

Run by tests/test_cli.py with ``python`` and ``python -m polyproc run``:
the same output and status.
"""
import multiprocessing as mp
import sys


def producer(q, n):
    for i in range(n):
        q.put(i)
    q.put(None)


def consumer(q, out):
    total = 0
    while True:
        item = q.get()
        if item is None:
            break
        total += item
    out.put(total)


def cube(x):
    return x ** 3


if __name__ == "__main__":
    with mp.Manager() as manager:
        q = manager.Queue()
        out = manager.Queue()
        procs = [mp.Process(target=producer, args=(q, 100)),
                 mp.Process(target=consumer, args=(q, out))]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        print("consumed", out.get(), [p.exitcode for p in procs])
        d = manager.dict()
        d["a"] = 1
        print("dict", dict(d))
    with mp.Pool(3) as pool:
        print("pool", pool.map(cube, range(8)))
        r = pool.apply_async(cube, (4,))
        print("async", r.get(timeout=10))
    print("done", file=sys.stderr)
    sys.exit(3)
