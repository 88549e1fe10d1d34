"""An unmodified stdlib program that sets the spawn start method under its
``if __name__ == "__main__":`` guard and binds Pool, Process and Queue at
import (``from multiprocessing import ...``); it ends by ``raise SystemExit("bye")``.

Run by tests/test_cli.py with ``python`` and ``python -m polyproc run``.
"""
import multiprocessing
from multiprocessing import Pool, Process, Queue


def work(x):
    return x + 100


def child(q):
    q.put(("child", __name__))


if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    print("method", multiprocessing.get_start_method())
    q = Queue()
    p = Process(target=child, args=(q,))
    p.start()
    print(q.get(timeout=30))
    p.join()
    print("exitcode", p.exitcode)
    with Pool(2) as pool:
        print(pool.map(work, range(4)))
        print(sorted(pool.imap_unordered(work, range(3), chunksize=1)))
    raise SystemExit("bye")
