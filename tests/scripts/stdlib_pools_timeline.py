"""An unmodified stdlib program with two Pools, one after the other, and a
ProcessPoolExecutor: ``stdlib_pools_timeline.py METHOD``.

Under ``python -m polyproc run --timeline run.json`` each writes its own
file: run.json (4 chunks on 2 workers), run-2.json (3 chunks on 3 workers;
a pool the program never closes, written at exit), run-3.json (the
Executor: 5 tasks on up to 2 workers).  Then a Pool made in a child
Process, which records no timeline (it would take the parent's names).
"""
import concurrent.futures
import multiprocessing
import sys


def square(x):
    return x * x


def pool_in_a_child():
    with multiprocessing.Pool(1) as pool:
        print(sum(pool.map(square, range(3))))


def main(method):
    multiprocessing.set_start_method(method)
    with multiprocessing.Pool(2) as pool:
        print(sum(pool.map(square, range(20), chunksize=5)))
    pool = multiprocessing.Pool(3)   # left open: written when the program ends
    print(sum(pool.map(square, range(12), chunksize=4)))
    with concurrent.futures.ProcessPoolExecutor(2) as executor:
        print(sum(executor.map(square, range(5))))
    child = multiprocessing.Process(target=pool_in_a_child)
    child.start()
    child.join()


if __name__ == "__main__":
    main(sys.argv[1])
