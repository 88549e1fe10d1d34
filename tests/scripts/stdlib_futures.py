"""An unmodified stdlib program: ProcessPoolExecutor with submit, as_completed,
a failing call, map and wait; it prints the executor's class name last.

Run by tests/test_cli.py with ``python`` and ``python -m polyproc run``:
the same output and status.
"""
import concurrent.futures as cf
import math


def is_prime(n):
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def fail(x):
    raise ValueError(f"bad {x}")


def main():
    numbers = [1_000_003, 1_000_033, 1_000_035, 999_999, 17, 18]
    with cf.ProcessPoolExecutor(max_workers=2) as executor:
        futures = {executor.submit(is_prime, n): n for n in numbers}
        results = {futures[f]: f.result() for f in cf.as_completed(futures)}
        for n in numbers:
            print(n, results[n])
        try:
            executor.submit(fail, 1).result()
        except ValueError as error:
            print("caught", repr(error))
        print(list(executor.map(is_prime, range(10), chunksize=3)))
        done, not_done = cf.wait([executor.submit(pow, 2, i) for i in range(5)])
        print(sorted(f.result() for f in done), len(not_done))
    print(type(executor).__name__)


if __name__ == "__main__":
    main()
