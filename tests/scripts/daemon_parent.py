"""A parent that starts one child and then waits to be SIGKILLed.

Run as ``python daemon_parent.py METHOD daemon|nondaemon|pool``.  Prints
``child <pid> [<pid>...]`` once the child (or every worker of a
``polyproc.Pool``, and under fork the pool's template process, which forks
its replacement workers) runs, then blocks on stdin until the test kills it.
"""
import sys
import threading

import polyproc


def child_main(conn):
    conn.send("running")
    conn.close()
    threading.Event().wait(30)  # bounded: the test kills it long before


if __name__ == "__main__":
    method, kind = sys.argv[1], sys.argv[2]
    ctx = polyproc.get_context(method)
    if kind == "pool":
        pool = ctx.Pool(2)
        pool.map(abs, range(4))  # the workers are up and running
        # The workers, and under fork the template process that forks the
        # replacements, which must die too.
        procs = [p.pid for p in pool._pool]
        template = getattr(pool._backend, "_template", None)
        if template is not None:
            procs.append(template.pid)
        pids = " ".join(str(pid) for pid in procs)
        print(f"child {pids}", flush=True)
        sys.stdin.readline()
        sys.exit(0)
    # A Pipe, not an Event: the test SIGKILLs this process, and an Event's
    # semaphores would then be reported as leaked by the resource tracker.
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=child_main, args=(writer,),
                        daemon=(kind == "daemon"))
    child.start()
    writer.close()
    if not reader.poll(30):
        sys.exit("child did not start")
    print(f"child {child.pid}", flush=True)
    sys.stdin.readline()  # the test closes stdin or kills us first
