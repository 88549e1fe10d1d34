"""A program whose first use of the fork server is a Pool, and which then
starts a Process through the same fork server and interrupts it.

Prints the Process's exit code: 1 (KeyboardInterrupt in run()) when the fork
server kept the default SIGINT handler; it would hang in the sleep if the
fork server had been started while polyproc shielded SIGINT.
"""
import signal
import sys
import time

import polyproc


def wait_for_interrupt(ready):
    ready.set()
    time.sleep(30)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ctx = polyproc.get_context("forkserver")
    with ctx.Pool(1) as pool:
        assert pool.apply(abs, (-1,)) == 1
    ready = ctx.Event()
    p = ctx.Process(target=wait_for_interrupt, args=(ready,))
    p.start()
    assert ready.wait(10)
    p.interrupt()
    p.join(5)
    print(p.exitcode)
    if p.exitcode is None:
        p.kill()
        p.join()
    sys.exit(0)
