# A main module that imports in the parent but raises when a spawned worker
# imports it (as __mp_main__): every worker fails to start.
import sys

import polyproc

if __name__ != "__main__":
    raise ImportError("this module cannot be imported by a pool worker")


def main():
    polyproc.set_start_method(sys.argv[1] if len(sys.argv) > 1 else "spawn", force=True)
    with polyproc.Pool(2) as pool:
        print(pool.map(abs, [-1, -2]))


if __name__ == "__main__":
    main()
