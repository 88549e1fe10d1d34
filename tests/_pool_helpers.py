"""Task functions for the Pool tests (importable, so spawn workers find them)."""
from __future__ import annotations

import ctypes
import gc
import os
import signal
import threading
import time
import weakref


def square(x):
    return x * x


def add(a, b):
    return a + b


def pid_of(_=None):
    return os.getpid()


def slow_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def identity_after(x, seconds=0.002):
    time.sleep(seconds)
    return x


def raise_value_error(x):
    raise ValueError(f"bad value {x}")


def kill_self(x, sig=signal.SIGKILL):
    os.kill(os.getpid(), sig)
    time.sleep(10)  # not reached


def kill_on(x, bad):
    """Kill the worker running task *bad*; every other task returns x."""
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    return x


def exit_on(x, bad, code=7):
    if x == bad:
        os._exit(code)
    return x


def segfault_on(x, bad):
    if x == bad:
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return x


def die_first_time(path):
    """SIGKILLs its worker the first time it runs (marker file), then returns 'ok'."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return "ok"
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


def return_lock(x):
    if x == 1:
        return threading.Lock()
    return x


class CustomInitError(Exception):
    def __init__(self, a, b):
        super().__init__(f"custom {a} {b}")
        self.a, self.b = a, b


def raise_custom_init(x):
    raise CustomInitError(x, "extra")


class UnpicklableAttrError(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()


def raise_unpicklable_attr(x):
    raise UnpicklableAttrError(f"holds a lock {x}")


def raise_system_exit(x):
    raise SystemExit(3)


def raise_keyboard_interrupt(x):
    raise KeyboardInterrupt("from task")


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


_hoard = []


def hoard_memory(mb):
    """Allocate and keep *mb* MiB in this worker; return the pid."""
    _hoard.append(bytearray(mb * 1024 * 1024))
    for block in _hoard:
        block[::4096] = b"\1" * len(block[::4096])  # touch every page
    return os.getpid()


def failing_initializer():
    raise RuntimeError("initializer broke")


_initialized = []


def set_initialized(value):
    _initialized.append(value)


def read_initialized(_=None):
    return list(_initialized)


def make_closure(k):
    return lambda x: x * k


def _refuse_to_load():
    raise RuntimeError("this result refuses to be unpickled")


class LoadsNowhere:
    """Pickles fine, fails when unpickled (in the parent)."""

    def __reduce__(self):
        return (_refuse_to_load, ())


def return_unloadable(x):
    if x == 2:
        return LoadsNowhere()
    return x


# -- callables pickled by value, and what polyproc keeps alive ----------------

class Holder:
    """State that changes between calls: its bound method and the object
    itself (a callable) pickle that state by value."""

    def __init__(self, x):
        self.x = x

    def get(self):
        return self.x

    def __call__(self):
        return self.x


def first_of(box):
    return box[0]


# Live Tracked objects *in this process* (in a worker: the copies it
# unpickled and has not dropped yet).
_tracked = weakref.WeakSet()


class Tracked:
    """A callable that can be weakly referenced and counted where it runs."""

    def __call__(self, *args):
        _tracked.add(self)
        return len(args)


def make_tracked(_=None):
    """A Tracked object as a task's result."""
    tracked = Tracked()
    _tracked.add(tracked)
    return tracked


def live_tracked(_=None):
    """How many Tracked objects this worker still holds, after a collection."""
    gc.collect()
    return len(_tracked)


class Box:
    """A result that can be weakly referenced (a plain int cannot)."""

    def __init__(self, value):
        self.value = value


def make_box(x):
    return Box(x)


def collected_within(ref, seconds: float = 5.0) -> bool:
    """True once the object behind weakref *ref* is collected, within *seconds*.

    Polled, because a pool thread may still hold it for a moment after the
    result arrived (the scheduler finishing the message that carried it);
    what must never happen is that the pool keeps it.
    """
    deadline = time.monotonic() + seconds
    while True:
        gc.collect()
        if ref() is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


# -- results whose pickling or unpickling raises a BaseException --------------

def _exit_while_unpickling(code):
    raise SystemExit(code)


class ExitsWhenUnpickled:
    """Pickles fine in the worker; unpickling it raises SystemExit(6)."""

    def __reduce__(self):
        return (_exit_while_unpickling, (6,))


class InterruptsWhenUnpickled:
    """Pickles fine in the worker; its __setstate__ raises KeyboardInterrupt."""

    def __init__(self):
        self.state = 1

    def __setstate__(self, state):
        raise KeyboardInterrupt("raised by __setstate__")


class ExitsWhenPickled:
    """Its __reduce__ raises SystemExit(5): the worker cannot pickle it."""

    def __reduce__(self):
        raise SystemExit(5)


def return_on(x, bad, make):
    """*x*, except for task *bad*, which returns ``make()``."""
    return make() if x == bad else x


def _rebuild_unless_elsewhere(pid, message):
    if os.getpid() != pid:
        raise SystemExit(7)
    return ExitsWhenRebuiltElsewhere(message)


class ExitsWhenRebuiltElsewhere(Exception):
    """Round-trips through pickle in the process that raised it (the worker);
    unpickling it in any other process (the parent) raises SystemExit(7)."""

    def __reduce__(self):
        return (_rebuild_unless_elsewhere, (os.getpid(), str(self)))


class ExitsWhenPickledError(Exception):
    """An exception whose __reduce__ raises SystemExit(5)."""

    def __reduce__(self):
        raise SystemExit(5)


def raise_it(cls, message="raised by the task"):
    raise cls(message)
