import multiprocessing
import sys
from .work import double

def main():
    print("argv", sys.argv[1:], __name__, __package__)
    with multiprocessing.Pool(2) as p:
        print(p.map(double, range(5)))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as p:
        print(p.map(double, range(3)))
    return 7

if __name__ == "__main__":
    sys.exit(main())
