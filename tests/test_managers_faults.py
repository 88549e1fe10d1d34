"""polyproc.managers: dead clients, dead servers, interrupted calls."""
from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
import time

import psutil
import pytest

import _manager_helpers as helpers
import polyproc
from polyproc._exceptions import ManagerConnectionError

pytestmark = pytest.mark.timeout(40)


def test_client_killed_mid_call_releases_objects_and_loses_no_item(ctx_fs):
    with helpers.ProbingManager(ctx=ctx_fs) as m:
        q = m.Queue()
        baseline = m._number_of_objects()
        ready = ctx_fs.Event()
        child = ctx_fs.Process(target=helpers.hold_objects_then_block,
                               args=(m.address, bytes(m._authkey), q, ready))
        child.start()
        assert ready.wait(20)
        assert helpers.wait_until(lambda: helpers.blocked_in_server(m, q), 10)
        gc.collect()
        assert m._number_of_objects() == baseline + 5
        os.kill(child.pid, signal.SIGKILL)      # in the middle of q.get()
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        # Its five lists are released when its lifeline closes.
        assert helpers.wait_until(lambda: m._number_of_objects() == baseline, 5)
        # The server thread that was blocked in q.get() for the dead child
        # must not swallow the next item.
        q.put("for the living")
        assert q.get(timeout=5) == "for the living"
        d = m.dict()
        d["other clients"] = "still served"
        assert d["other clients"] == "still served"


def test_lock_held_by_killed_client_is_released(ctx_fs):
    with ctx_fs.Manager() as m:
        lock, q, ready = m.Lock(), m.Queue(), ctx_fs.Event()
        child = ctx_fs.Process(target=helpers.lock_then_block,
                               args=(lock, q, ready))
        child.start()
        assert ready.wait(20)
        assert not lock.acquire(False)          # the child holds it
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert lock.acquire(timeout=5)          # released for the dead holder
        lock.release()


def test_interrupted_call_gives_its_item_back():
    # The test run may have been started with SIGINT ignored (a shell's
    # background job): Ctrl-C must raise KeyboardInterrupt here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    with polyproc.Manager() as m:
        q = m.Queue()
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                q.get(timeout=10)
        finally:
            timer.cancel()
            signal.signal(signal.SIGINT, previous)
        q.put(1)
        assert q.get(timeout=5) == 1            # not taken by the abandoned call


@pytest.mark.timeout(20)
def test_server_killed_clients_get_clear_error_quickly():
    m = polyproc.Manager()
    d, q = m.dict(), m.Queue()
    d["x"] = 1
    t, errors = helpers.call_in_thread(q.get)
    os.kill(m._process.pid, signal.SIGKILL)
    start = time.monotonic()
    t.join(5)
    assert not t.is_alive(), "a call blocked in the server hung after it died"
    assert isinstance(errors[0], ManagerConnectionError)
    with pytest.raises(ManagerConnectionError) as info:
        d["x"] = 2
    assert time.monotonic() - start < 5
    assert isinstance(info.value, ConnectionError)
    assert str(m.address) in str(info.value)
    m.shutdown()                                # no hang, no error


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_server_exits_when_its_parent_is_killed(method):
    # The middle process is the stdlib's: what is tested is the manager
    # server it starts (with *method*), killed right after start() returns.
    std_ctx = multiprocessing.get_context(method)
    outq = std_ctx.SimpleQueue()
    parent = std_ctx.Process(target=helpers.start_manager_and_report,
                             args=(outq, method))
    parent.start()
    try:
        server_pid = outq.get()       # bounded by the test's timeout
        server = psutil.Process(server_pid)
    finally:
        os.kill(parent.pid, signal.SIGKILL)     # also when the get failed
        parent.join(10)

    def server_gone() -> bool:
        try:
            return server.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert helpers.wait_until(server_gone, 10)


@pytest.mark.timeout(30)
def test_server_killed_while_a_process_it_forked_lives():
    # A process forked by the server (a Pool's workers, say) must not keep
    # the clients' sockets open, or clients would wait forever for a reply.
    m = helpers.ForkingManager(ctx=polyproc.get_context("fork"))
    m.start()
    forker = m.Forker()
    lingering = psutil.Process(forker.pid())
    try:
        os.kill(m._process.pid, signal.SIGKILL)
        # (not join(): the lingering child holds the server's sentinel pipe)
        assert helpers.wait_until(lambda: m._process.exitcode is not None, 10)
        assert lingering.is_running()
        with pytest.raises(ManagerConnectionError):
            forker.pid()
    finally:
        lingering.kill()
        m.shutdown()


def test_condition_held_by_killed_client_is_released():
    ctx = polyproc.get_context("fork")
    with ctx.Manager() as m:
        cond, q, ready = m.Condition(), m.Queue(), ctx.Event()
        child = ctx.Process(target=helpers.hold_condition_then_block,
                            args=(cond, q, ready))
        child.start()
        assert ready.wait(20)
        assert not cond.acquire(False)
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert cond.acquire(timeout=5)
        assert cond.wait(0.01) is False          # wait/notify still work
        cond.notify_all()
        cond.release()


def test_killed_waiter_does_not_take_a_semaphore_permit():
    ctx = polyproc.get_context("fork")
    with helpers.ProbingManager(ctx=ctx) as m:
        sem, ready = m.Semaphore(0), ctx.Event()
        child = ctx.Process(target=helpers.wait_on_semaphore, args=(sem, ready))
        child.start()
        assert ready.wait(20)
        assert helpers.wait_until(lambda: helpers.blocked_in_server(m, sem), 10)
        os.kill(child.pid, signal.SIGKILL)      # in the middle of acquire()
        child.join(10)
        sem.release()
        assert sem.acquire(timeout=5)            # the permit was not stolen


def test_manager_finalized_while_a_client_is_being_made():
    # The garbage collector may finalize a dropped manager (which drops its
    # clients) while the same thread is inside get_client, holding the
    # clients' lock: that must not deadlock the thread on itself.
    from polyproc._managers import client as _manager_client
    m = polyproc.Manager()
    done = threading.Event()

    def finalize_inside_get_client():
        with _manager_client._clients_lock:
            m.shutdown()              # what the finalizer of a dropped one does
        done.set()

    t = threading.Thread(target=finalize_inside_get_client, daemon=True)
    t.start()
    assert done.wait(15), "drop_client deadlocked under the clients' lock"
    t.join(5)


def _refcount(m, ident: int) -> int:
    for line in m._debug_info().splitlines():
        if line.strip().startswith(f"{ident}:"):
            return int(line.split("refcount=")[1])
    return 0


def test_late_release_of_a_gone_process_drops_nothing_of_others():
    # A process sends a DecRef and exits: its lifeline may close (releasing
    # all its references) before its call connection's DecRef is read.
    # That DecRef must then release nothing: the references left are other
    # processes' (this one failed under load, as a ReferenceError on a proxy
    # the test still held).
    import socket
    from polyproc._managers.wire import (Channel, Control, DecRef, Hello, IncRef,
                                        Ok, client_handshake, decode, encode)
    with polyproc.managers.SyncManager(address=("127.0.0.1", 0),
                                       authkey=b"k") as m:
        d = m.dict({"x": 1})
        session = os.urandom(16)

        def connect(lifeline: bool) -> Channel:
            sock = socket.create_connection(m.address, timeout=5)
            client_handshake(sock, b"k", m.address)
            chan = Channel(sock, 1 << 20, 5.0)
            chan.send(encode(Hello(session, lifeline)))
            return chan

        lifeline, calls = connect(True), connect(False)
        calls.send(encode(IncRef(d._id)))
        assert type(decode(calls.recv())) is Ok
        assert _refcount(m, d._id) == 2
        lifeline.close()                          # the process is gone
        assert helpers.wait_until(lambda: _refcount(m, d._id) == 1, 5)
        calls.send(encode(DecRef((d._id,))))      # read after the release
        calls.send(encode(Control("dummy")))
        assert type(decode(calls.recv())) is Ok
        assert _refcount(m, d._id) == 1
        assert d["x"] == 1
        calls.send(encode(IncRef(d._id)))         # a late IncRef: not counted
        assert type(decode(calls.recv())) is Ok   # for a process that is gone
        assert _refcount(m, d._id) == 1
        calls.close()
