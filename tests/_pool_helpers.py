"""Task functions for the Pool tests (importable, so spawn workers find them)."""
from __future__ import annotations

import contextlib
import ctypes
import gc

import linecache
import os
import signal
import sys
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

# -- Ctrl-C and fork children (the parent's side and the tasks) ---------------

def square_unless_held(x, hold_dir):
    """x * x; but while *hold_dir*/hold exists, block until it goes (at most 30 s).

    Before blocking it leaves *hold_dir*/started-<x> holding this worker's
    pid (written whole: renamed into place), so the test knows it runs.
    """
    hold = os.path.join(hold_dir, "hold")
    if os.path.exists(hold):
        started = os.path.join(hold_dir, f"started-{x}")
        with open(started + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(started + ".tmp", started)
        deadline = time.monotonic() + 30
        while os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.005)
    return x * x


class InterruptWhenPickled:
    """An argument that, pickled in the parent while a call submits its
    tasks, waits (at most 20 s) for the file *started* to exist, then sends
    this process SIGINT: a Ctrl-C in the middle of the submission.  With
    *resume_when*, pickling then also waits for that file (the test's sign
    that the interrupt was handled).  It arrives in the worker as *value*."""

    def __init__(self, started: str, value, resume_when: str | None = None):
        self.started = started
        self.value = value
        self.resume_when = resume_when

    def __reduce__(self):
        _wait_for_file(self.started)
        os.kill(os.getpid(), signal.SIGINT)
        if self.resume_when is not None:
            _wait_for_file(self.resume_when)
        return (_identity, (self.value,))


@contextlib.contextmanager
def interrupt_when_returning(function_name: str, started: str):
    """Inside: when a function named *function_name* returns in this thread,
    wait for the file *started*, then send this process SIGINT.

    Its KeyboardInterrupt then comes out of that call, just after it
    returned: a Ctrl-C at an exact instant that no timer could aim at (a
    trace function only picks the moment; the signal and its handler are
    the real ones).
    """
    def on_call(frame, event, arg):
        if event == "call" and frame.f_code.co_name == function_name:
            return on_event
        return None

    def on_event(frame, event, arg):
        if event == "return":
            sys.settrace(previous)
            _wait_for_file(started)
            os.kill(os.getpid(), signal.SIGINT)
        return on_event

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)


def _wait_for_file(path: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)


def _identity(value):
    return value


@contextlib.contextmanager
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt in the main thread while inside.

    The test run may have been started with SIGINT ignored (a shell's
    background job passes that on), and then no Ctrl-C test means anything.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main_thread_blocked_in(module_file: str) -> bool:
    """Whether the main thread waits at a blocking call of *module_file*.

    Its innermost frame outside threading.py must be in that module, at a
    line that acquires a lock or waits on a condition: a Ctrl-C then lands
    inside that wait, as a user's does, not on the way into it.
    """
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None and frame.f_code.co_filename.endswith("threading.py"):
        frame = frame.f_back
    if frame is None or not frame.f_code.co_filename.endswith(module_file):
        return False
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    return "acquire(" in line or ".wait(" in line


class CtrlC(threading.Thread):
    """Sends this process one SIGINT, like a Ctrl-C, once *ready()* is true
    and the main thread is blocked waiting in *module_file*; ``sent_at``
    (time.monotonic) says when.  Gives up after *limit* seconds."""

    def __init__(self, module_file: str, ready=lambda: True, limit: float = 20.0):
        super().__init__(daemon=True)
        self.module_file = module_file
        self.ready = ready
        self.limit = limit
        self.sent_at = None

    def run(self):
        deadline = time.monotonic() + self.limit
        while time.monotonic() < deadline:
            if self.ready() and main_thread_blocked_in(self.module_file):
                self.sent_at = time.monotonic()
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.005)


def wait_workers_ready(backend, limit: float = 20.0) -> None:
    """Return once every worker of a ProcessScheduler said it is ready."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        workers = list(backend._workers.values())
        if len(workers) == backend.size and all(w.ready for w in workers):
            return
        time.sleep(0.005)
    raise AssertionError(f"the pool's workers were not ready within {limit} s")


def _outcome(call) -> tuple:
    """(name of the exception *call* raised, or "ok"; seconds it took)."""
    started = time.monotonic()
    try:
        call()
        name = "ok"
    except BaseException as exc:  # report whatever it was
        name = type(exc).__name__
        if name == "InheritedPoolError" and "Create the Pool" not in str(exc):
            name = "InheritedPoolError without its advice"
    return name, time.monotonic() - started


def inherited_pool_outcomes(pool, unfinished) -> dict:
    """In a fork child: what each use of the parent's *pool* does.

    *unfinished* is a result the parent made that cannot finish yet.
    """
    def enter():
        with pool:
            pass
    calls = {
        "apply_async": lambda: pool.apply_async(square, (2,)),
        "map": lambda: pool.map(square, [1, 2]),
        "map_async": lambda: pool.map_async(square, [1, 2]),
        "imap": lambda: pool.imap(square, iter([1])),
        "with": enter,
        "unfinished.get": lambda: unfinished.get(timeout=10),
        "unfinished.wait": lambda: unfinished.wait(timeout=10),
        # Clean-up of the child's copy: returns, and leaves the parent's alone.
        "close": pool.close,
        "join": pool.join,
        "terminate": pool.terminate,
    }
    return {name: _outcome(call) for name, call in calls.items()}


def inherited_executor_outcomes(executor, unfinished) -> dict:
    """In a fork child: what each use of the parent's *executor* does."""
    calls = {
        "submit": lambda: executor.submit(square, 2),
        "map": lambda: executor.map(square, [1, 2]),
        "unfinished.result": lambda: unfinished.result(timeout=10),
        "unfinished.exception": lambda: unfinished.exception(timeout=10),
        "shutdown": lambda: executor.shutdown(wait=True),
    }
    return {name: _outcome(call) for name, call in calls.items()}


def report_inherited_outcomes(pool, pool_result, executor, future, conn):
    """Target of a Process under fork: send both reports to the parent."""
    conn.send((inherited_pool_outcomes(pool, pool_result),
               inherited_executor_outcomes(executor, future)))
    conn.close()


def report_of_fork_child(make_report, around_fork=contextlib.nullcontext) -> dict:
    """Fork with ``os.fork()``; in the child, send back ``make_report()`` as JSON.

    The child never returns into the caller (``os._exit``).  The parent
    reads the report within a bound, reaps the child, and checks that it
    exited cleanly; a child that hangs is killed.  The fork runs inside
    ``around_fork()`` (which the child never leaves: it exits in it):
    ``conftest.expect_fork_warning`` where the test forks on purpose while
    a pool's scheduler thread runs (Python 3.12+ warns).
    """
    import json
    from multiprocessing.connection import wait
    r, w = os.pipe()
    with around_fork():
        child = os.fork()
        if child == 0:  # never return into pytest from here, nor leave the with
            _send_report_and_exit(make_report, r, w)
    os.close(w)
    try:
        with os.fdopen(r, "r") as f:
            assert wait([f], 20), "the forked child hangs"
            report = json.loads(f.read())
    except BaseException:
        os.kill(child, signal.SIGKILL)
        raise
    finally:
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return report


def _send_report_and_exit(make_report, r: int, w: int) -> None:
    import json
    code = 1
    try:
        os.close(r)
        os.write(w, json.dumps(make_report()).encode())
        code = 0
    finally:
        os._exit(code)


def sigint_handler_after_loading(config_bytes: bytes, queue) -> None:
    """In a child: unpickle a worker's config, then report what SIGINT does."""
    import pickle
    import signal
    pickle.loads(config_bytes)
    handler = signal.getsignal(signal.SIGINT)
    queue.put("raises" if handler is signal.default_int_handler else "harmless")
