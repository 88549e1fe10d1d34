"""Targets and Process subclasses for tests/test_process.py.

They live in an importable module so that spawn and forkserver children can
unpickle them by reference.
"""
from __future__ import annotations

import os
import sys
import threading

import polyproc


def noop() -> None:
    pass


def exit_with(code) -> None:
    sys.exit(code)


def raise_value_error(text: str) -> None:
    raise ValueError(text)


def wait_forever(started, timeout: float = 30.0) -> None:
    """Signal *started*, then block (bounded) until killed by the test."""
    started.set()
    threading.Event().wait(timeout)


def report_identity(conn) -> None:
    """Send what the child sees of itself and of its parent."""
    me = polyproc.current_process()
    parent = polyproc.parent_process()
    conn.send({
        "name": me.name,
        "pid": os.getpid(),
        "ident": me.ident,
        "daemon": me.daemon,
        "authkey": bytes(me.authkey),
        "parent_pid": parent.pid if parent is not None else None,
        "parent_alive": parent.is_alive() if parent is not None else None,
        "children": len(polyproc.active_children()),
    })
    conn.close()


class BadInitError(Exception):
    """Plain pickle cannot rebuild it (__init__ needs two arguments);
    polyproc rebuilds it without calling __init__."""

    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")
        self.a = a
        self.b = b


def raise_bad_init() -> None:
    raise BadInitError("left", "right")


def raise_unpicklable() -> None:
    error = RuntimeError("holds a lock")
    error.lock = threading.Lock()
    raise error


def raise_huge(size: int) -> None:
    raise ValueError("x" * size)


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def raise_child_only_class() -> None:
    """Raise an exception whose class exists only in this child."""
    module = type(sys)("_polyproc_child_only")
    exec("class ChildOnlyError(Exception):\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    raise module.ChildOnlyError("made in the child")


def call_input() -> None:
    input("your name? ")


def probe_stdin(conn) -> None:
    """Report how each way of reading stdin fails, and what still works."""
    out = {}
    for label, read in [("read", lambda: sys.stdin.read()),
                        ("readline", lambda: sys.stdin.readline()),
                        ("readlines", lambda: sys.stdin.readlines()),
                        ("iterate", lambda: next(iter(sys.stdin))),
                        ("buffer", lambda: sys.stdin.buffer.read()),
                        ("input", lambda: input())]:
        try:
            read()
            out[label] = "no error"
        except EOFError as error:
            out[label] = (type(error).__name__, str(error))
    out["isatty"] = sys.stdin.isatty()
    out["fileno_is_devnull"] = (os.path.realpath(f"/proc/self/fd/{sys.stdin.fileno()}")
                                == os.devnull)
    out["closed"] = sys.stdin.closed
    conn.send(out)
    conn.close()


class SubclassProcess(polyproc.Process):
    """A user subclass overriding run(), as the stdlib documents."""

    def __init__(self, conn, fail: bool = False):
        super().__init__()
        self.conn = conn
        self.fail = fail

    def run(self) -> None:
        self.conn.send(f"run in {polyproc.current_process().name}")
        self.conn.close()
        if self.fail:
            raise LookupError("subclass run failed")


def make_subclass(ctx, conn, fail: bool = False):
    """An instance of a subclass of *ctx*'s Process class."""
    cls = _SUBCLASSES[ctx.get_start_method()]
    return cls(conn, fail)


def _subclass_of(base):
    class Sub(base):
        def __init__(self, conn, fail=False):
            super().__init__()
            self.conn = conn
            self.fail = fail

        def run(self):
            self.conn.send(f"run in {polyproc.current_process().name}")
            self.conn.close()
            if self.fail:
                raise LookupError("subclass run failed")
    Sub.__qualname__ = Sub.__name__ = f"Sub{base.__name__}"
    return Sub


SubForkProcess = _subclass_of(polyproc.get_context("fork").Process)
SubSpawnProcess = _subclass_of(polyproc.get_context("spawn").Process)
SubForkServerProcess = _subclass_of(polyproc.get_context("forkserver").Process)
_SUBCLASSES = {"fork": SubForkProcess, "spawn": SubSpawnProcess,
               "forkserver": SubForkServerProcess}


def segfault() -> None:
    import ctypes
    import faulthandler
    faulthandler.disable()  # pytest enables it; its dump is noise here
    ctypes.string_at(0)


def hard_exit(code: int) -> None:
    os._exit(code)


def reuse_parent_sentinel_fd(conn, seconds: float) -> None:
    """Close the parent sentinel, reuse its number for /dev/zero (always
    readable), stay alive *seconds*, then report.  A watchdog that trusted
    the descriptor number would kill this daemon first.
    """
    fd = polyproc.parent_process().sentinel
    zero = os.open("/dev/zero", os.O_RDONLY)
    # dup2, not close + open: another thread may take a freed number first,
    # and the test must be sure the sentinel's number names /dev/zero now.
    os.dup2(zero, fd)
    os.close(zero)
    threading.Event().wait(seconds)
    conn.send(("alive", os.path.samestat(os.fstat(fd), os.stat("/dev/zero"))))
    conn.close()


def start_failing_grandchild(method: str) -> None:
    """Start a grandchild that raises; raise what its p.exception says."""
    p = polyproc.get_context(method).Process(target=raise_value_error,
                                             args=("from the grandchild",))
    p.start()
    p.join(30)
    raise RuntimeError(f"grandchild: {type(p.exception).__name__}: {p.exception}")
