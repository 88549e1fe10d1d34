"""An unmodified stdlib program whose child reports which classes it sees.

``stdlib_children.py METHOD``: a child started with METHOD puts in a Queue
the modules of ``multiprocessing.Pool``, of ``Pool`` bound at the top of
this module (``from multiprocessing import Pool``, run again when a spawn
or forkserver child imports this module), of a Queue made in the child,
and of ``ProcessPoolExecutor``; the parent prints them.
"""
import concurrent.futures
import multiprocessing
import sys
from multiprocessing import Pool


def owner(factory):
    """The module that defines what *factory* makes (a class or a bound method)."""
    return getattr(factory, "__self__", factory).__class__.__module__ \
        if hasattr(factory, "__self__") else factory.__module__


def report(queue):
    queue.put({
        "multiprocessing.Pool": owner(multiprocessing.Pool),
        "Pool bound at import": owner(Pool),
        "Queue": type(multiprocessing.Queue()).__module__,
        "ProcessPoolExecutor": owner(concurrent.futures.ProcessPoolExecutor),
    })


if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    queue = ctx.Queue()
    child = ctx.Process(target=report, args=(queue,))
    child.start()
    print(queue.get(timeout=60), flush=True)
    child.join()
    print("parent:", owner(multiprocessing.Pool), flush=True)
