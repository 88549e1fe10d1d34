"""Task functions for the Pool tests (importable, so spawn workers find them)."""
from __future__ import annotations

import ctypes
import os
import signal
import threading
import time


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
