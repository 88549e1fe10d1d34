"""Zero-copy transport between processes: each carrier, each start method, each fault.

Leak checks look at /dev/shm for the names of one *session* (see
polyproc/_shm_tracker.py): this test process's own, or that of a separate
Python program started here when the fault ends the session (a killed
parent, a program that exits with data unread).
"""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest

import polyproc
from polyproc._transport import serialization as ser
from polyproc._transport import shm as _shm
from polyproc._transport import shm_cache as _shm_pool
from polyproc._transport import tracker as _shm_tracker
from polyproc.connection import Client, Connection, Listener

import _zero_copy_helpers as h
from _zero_copy_helpers import MiB, our_segments, pattern

N = 4 * MiB  # above the threshold, small enough to keep the tests quick


@pytest.fixture(autouse=True)
def no_leaks():
    before = our_segments()
    yield
    gc.collect()        # received objects die: their segments become FREE
    _shm_pool.trim()    # recycled FREE segments are unlinked
    h.wait_for_segments(before, timeout=5)  # and the tracker's sweep (1 s)


def _join(p, timeout=30):
    p.join(timeout)
    assert p.exitcode is not None, "child did not finish"


# -- Pipe / Connection --------------------------------------------------------------

@pytest.mark.timeout(60)
def test_pipe_parent_to_child_round_trip_and_copy_semantics(ctx):
    parent, child = ctx.Pipe()
    arr = pattern(N, seed=1)
    p = ctx.Process(target=h.receive_and_check, args=(child, N, 1))
    p.start()
    parent.send(arr)
    assert parent.poll(30) and parent.recv() is True
    arr[:] = 0                      # the sender changes its array...
    parent.send("changed")
    assert parent.poll(30) and parent.recv() is True  # ...the receiver's is intact
    _join(p)
    assert p.exitcode == 0


@pytest.mark.timeout(60)
def test_pipe_child_sends_then_exits_before_parent_reads(ctx):
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=h.send_array_and_exit, args=(child, N, 2))
    p.start()
    child.close()
    _join(p)                        # the sender is gone before we read
    got = parent.recv()
    assert np.array_equal(got, pattern(N, 2))
    assert got.flags.writeable


@pytest.mark.timeout(60)
def test_echo_every_buffer_type_through_a_child(ctx_fs):
    parent, child = ctx_fs.Pipe()
    p = ctx_fs.Process(target=h.echo, args=(child,))
    p.start()
    base = pattern(N, seed=3)
    cases = [
        base, bytes(base), bytearray(base), memoryview(base),
        h.Blob(bytearray(base)), {"a": base, "b": [pattern(MiB, 4), b"small"]},
        np.asfortranarray(base.view(np.float64).reshape(1024, -1)),
    ]
    for obj in cases:
        parent.send(obj)
        assert parent.poll(30)
        back = parent.recv()
        if isinstance(obj, np.ndarray):
            assert np.array_equal(back, obj) and back.dtype == obj.dtype
        elif isinstance(obj, memoryview):
            assert isinstance(back, memoryview) and back.tobytes() == obj.tobytes()
        elif isinstance(obj, h.Blob):
            assert bytes(back.data) == bytes(obj.data)
        elif isinstance(obj, dict):
            assert np.array_equal(back["a"], base)
            assert np.array_equal(back["b"][0], pattern(MiB, 4))
            assert back["b"][1] == b"small"
        else:
            assert type(back) is type(obj) and back == obj
    parent.send(None)
    _join(p)
    assert p.exitcode == 0


@pytest.mark.timeout(30)
def test_stdlib_methods_keep_their_meaning():
    a, b = polyproc.Pipe()
    with a, b:
        assert isinstance(a, Connection) and a.fileno() >= 0
        a.send_bytes(b"raw bytes")
        assert b.poll(5) and b.recv_bytes() == b"raw bytes"
        a.send([1, "two"])
        assert b.recv() == [1, "two"]
        with pytest.raises(polyproc.SerializationError):
            a.send(threading.Lock())
        a.send("still usable")     # nothing half-written by the failed send
        assert b.recv() == "still usable"
    with pytest.raises(OSError):
        a.send(1)


@pytest.mark.timeout(30)
def test_listener_and_client_return_zero_copy_connections():
    with Listener(family="AF_UNIX", authkey=b"secret") as listener:
        received = {}

        def serve():
            with listener.accept() as conn:
                received["type"] = type(conn)
                received["obj"] = conn.recv()
                conn.send("ok")

        t = threading.Thread(target=serve)
        t.start()
        with Client(listener.address, authkey=b"secret") as conn:
            assert isinstance(conn, Connection)
            conn.send(pattern(N, 5))
            assert conn.poll(30) and conn.recv() == "ok"
        t.join(30)
    assert received["type"] is Connection
    assert np.array_equal(received["obj"], pattern(N, 5))


@pytest.mark.timeout(60)
def test_connection_passed_to_a_child_stays_zero_copy(ctx):
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=h.send_own_type_and_array, args=(w, N, 6))
    p.start()
    w.close()
    assert r.poll(30)
    assert r.recv() == "polyproc.connection.Connection"
    payload = r.recv_bytes()    # the raw message: a zero-copy payload
    assert payload[:4] == ser.MAGIC
    assert np.array_equal(ser.loads(payload), pattern(N, 6))
    _join(p)


@pytest.mark.timeout(60)
def test_full_dev_shm_sends_through_the_pipe(ctx_fs, monkeypatch):
    def enospc(name):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_shm, "_open_new", enospc)
    monkeypatch.setattr(ser, "_warned_fallback", True)  # silence the warning
    parent, child = ctx_fs.Pipe()
    p = ctx_fs.Process(target=h.receive_and_check, args=(child, N, 7))
    p.start()
    parent.send(pattern(N, 7))      # in-band: 4 MiB through the socket
    assert parent.poll(30) and parent.recv() is True
    parent.send("go on")
    assert parent.poll(30) and parent.recv() is True
    _join(p)


# -- Queue and Pool (whatever polyproc.Queue / polyproc.Pool are now) -----------------

@pytest.mark.timeout(60)
def test_queue_item_survives_its_producer(ctx_fs):
    q = ctx_fs.Queue()
    p = ctx_fs.Process(target=h.queue_put_and_exit, args=(q, N, 8))
    p.start()
    got = q.get(timeout=30)
    assert np.array_equal(got, pattern(N, 8))
    _join(p)


@pytest.mark.timeout(90)
def test_pool_map_arguments_and_results(ctx_fs):
    arrays = [pattern(N, s) for s in range(4)]
    with ctx_fs.Pool(2) as pool:
        sums = pool.map(h.array_checksum, arrays)
        results = pool.map(h.make_pattern, [(N, s) for s in range(4)])
    assert sums == [h.array_checksum(a) for a in arrays]
    for s, got in enumerate(results):
        assert np.array_equal(got, pattern(N, s))


@pytest.mark.timeout(60)
def test_pool_worker_sigkilled_holding_a_zero_copy_argument():
    ctx = polyproc.get_context("fork")
    q = ctx.Queue()
    with ctx.Pool(1) as pool:
        result = pool.apply_async(h.report_pid_then_block, (pattern(N, 9), q))
        pid = q.get(timeout=30)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(polyproc.WorkerLostError):
            result.get(timeout=30)
        # the pool goes on with a new worker, through shared memory again
        assert pool.apply(h.array_checksum, (pattern(N, 10),)) == \
            h.array_checksum(pattern(N, 10))
    # the no_leaks fixture: the argument's segment went with the receive


# -- Faults that end a whole session: a separate program ------------------------------

SESSION_PROGRAM_HEAD = """
import os, sys, signal
import numpy as np
import polyproc
from polyproc._transport import shm as _shm
sys.path.insert(0, {tests!r})
import _zero_copy_helpers as h
ctx = polyproc.get_context("fork")
print("SESSION", os.environ["POLYPROC_SHM_SESSION"], _shm.session_prefix(), flush=True)
"""


def _run_session(body: str, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != _shm_tracker.SESSION_ENV}
    code = (SESSION_PROGRAM_HEAD.format(tests=os.path.dirname(__file__))
            + textwrap.dedent(body))
    return subprocess.Popen([sys.executable, "-c", code], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, **kwargs)


def _read_tag(proc: subprocess.Popen, tag: str) -> list[str]:
    for line in proc.stdout:
        words = line.split()
        if words and words[0] == tag:
            return words[1:]
    raise AssertionError(f"program ended without printing {tag}")


def _tracker_of(session_text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if session_text in cmd and any("polyproc._transport.tracker_daemon" in part
                                       for part in cmd):
            found.append(proc)
    return found


def _wait_dead(proc: psutil.Process, timeout: float) -> None:
    """Until *proc* has exited (gone, or a zombie its parent has not reaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return
            proc.wait(timeout=0.05)
            return
        except psutil.TimeoutExpired:
            continue
        except psutil.NoSuchProcess:
            return
    raise AssertionError(f"process {proc.pid} still running after {timeout} s")


def _assert_session_cleaned(session_text: str, prefix: str) -> None:
    """Wait (bounded) for the session's tracker to finish, then look."""
    for tracker in _tracker_of(session_text):
        _wait_dead(tracker, 10)    # it unlinks, then exits
    assert our_segments(prefix) == []


@pytest.mark.timeout(60)
def test_consumers_killed_before_reading_then_program_exits():
    proc = _run_session("""
        r, w = ctx.Pipe()
        q = ctx.Queue()
        ready = ctx.Event()
        consumer = ctx.Process(target=h.never_read, args=(r, ready))
        consumer.start()
        assert ready.wait(30)
        w.send(h.pattern(4 << 20, 1))       # unread, in the pipe
        q.put(h.pattern(4 << 20, 2))        # unread, in the queue
        os.kill(consumer.pid, signal.SIGKILL)
        consumer.join(30)
        print("LEFT", len(h.our_segments()), flush=True)
    """)
    session_text, prefix = _read_tag(proc, "SESSION")
    (left,) = _read_tag(proc, "LEFT")
    assert int(left) == 2              # both unread payloads were in /dev/shm
    assert proc.wait(30) == 0
    _assert_session_cleaned(session_text, prefix)


@pytest.mark.timeout(60)
def test_parent_sigkilled_with_data_in_flight():
    proc = _run_session("""
        r, w = ctx.Pipe()
        w.send(h.pattern(4 << 20, 3))
        w.send({"two": [h.pattern(2 << 20, 4), h.pattern(2 << 20, 5)]})
        print("READY", len(h.our_segments()), flush=True)
        sys.stdin.read()                   # until killed
    """)
    session_text, prefix = _read_tag(proc, "SESSION")
    (count,) = _read_tag(proc, "READY")
    assert int(count) == 3 and len(our_segments(prefix)) == 3
    assert _tracker_of(session_text), "no tracker watches the session"
    proc.kill()
    assert proc.wait(30) == -signal.SIGKILL
    _assert_session_cleaned(session_text, prefix)


@pytest.mark.timeout(60)
def test_sender_killed_after_sending_keeps_data_for_the_reader():
    proc = _run_session("""
        r, w = ctx.Pipe(duplex=False)
        sender = ctx.Process(target=h.send_array_and_exit, args=(w, 4 << 20, 6))
        sender.start()
        w.close()
        sender.join(30)
        got = r.recv()                     # after the sender is gone
        print("OK", bool(np.array_equal(got, h.pattern(4 << 20, 6))), flush=True)
    """)
    session_text, prefix = _read_tag(proc, "SESSION")
    assert _read_tag(proc, "OK") == ["True"]
    assert proc.wait(30) == 0
    _assert_session_cleaned(session_text, prefix)


@pytest.mark.timeout(60)
def test_a_killed_tracker_is_replaced():
    proc = _run_session("""
        from polyproc._transport import serialization as ser
        a = ser.loads(ser.dumps(h.pattern(4 << 20, 7)))
        print("TRACKING", flush=True)
        sys.stdin.readline()               # the test kills the tracker now
        payload = ser.dumps(h.pattern(4 << 20, 8))
        print("AGAIN", payload[:4] == ser.MAGIC,
              bool(np.array_equal(ser.loads(payload), h.pattern(4 << 20, 8))), flush=True)
    """)
    session_text, prefix = _read_tag(proc, "SESSION")
    _read_tag(proc, "TRACKING")
    (tracker,) = _tracker_of(session_text)
    tracker.kill()
    _wait_dead(tracker, 10)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert _read_tag(proc, "AGAIN") == ["True", "True"]
    assert proc.wait(30) == 0
    _assert_session_cleaned(session_text, prefix)


# -- Recycled segments across processes -------------------------------------------------

@pytest.mark.timeout(60)
def test_fork_child_keeps_its_copy_when_the_parent_drops_its_own():
    ctx = polyproc.get_context("fork")
    n = 2 * ser.ZERO_COPY_THRESHOLD
    payload = ser.dumps(pattern(n, 1))
    ref = ser._read_header(payload).buffers[0]
    assert ref.recycled
    back = ser.loads(payload)
    parent, child = ctx.Pipe()
    p = ctx.Process(target=h.check_inherited, args=(back, child, n, 1))
    p.start()                   # the child inherits `back`'s mapping
    del back
    gc.collect()                # FREE here, but pinned by the fork
    again = ser.dumps(pattern(n, 2))
    assert ser._read_header(again).buffers[0].name != ref.name  # not refilled
    assert np.array_equal(ser.loads(again), pattern(n, 2))
    parent.send("check")
    assert parent.poll(30) and parent.recv() is True
    _join(p)


@pytest.mark.timeout(60)
def test_segments_of_a_sigkilled_sender_are_swept():
    ctx = polyproc.get_context("fork")
    before = our_segments()
    parent, child = ctx.Pipe()
    p = ctx.Process(target=h.send_array_then_block, args=(child, N, 11))
    p.start()
    assert parent.poll(30)
    got = parent.recv()
    assert np.array_equal(got, pattern(N, 11))
    del got
    gc.collect()                # FREE, in the (live) sender's pool
    assert len(our_segments()) == len(before) + 1
    os.kill(p.pid, signal.SIGKILL)
    _join(p)
    h.wait_for_segments(before, timeout=5)   # the tracker's sweep


@pytest.mark.timeout(60)
def test_tracker_exits_after_sweeping_a_killed_sender():
    proc = _run_session("""
        import gc
        r, w = ctx.Pipe()
        p = ctx.Process(target=h.send_array_then_block, args=(w, 4 << 20, 1))
        p.start()
        got = r.recv()
        del got
        gc.collect()
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        h.wait_for_segments([], timeout=10)    # the tracker's sweep
        print("SWEPT", flush=True)
        sys.stdin.readline()
    """)
    session_text, prefix = _read_tag(proc, "SESSION")
    _read_tag(proc, "SWEPT")
    assert _tracker_of(session_text), "no tracker watches the session"
    proc.stdin.write("exit\n")
    proc.stdin.flush()
    assert proc.wait(30) == 0
    _assert_session_cleaned(session_text, prefix)   # it exits with the session


# -- Each carrier, each buffer type ------------------------------------------------------

@pytest.mark.timeout(60)
def test_every_buffer_type_through_a_queue(ctx_fs):
    cases = h.buffer_cases(N, 12)
    q_in, q_out = ctx_fs.Queue(), ctx_fs.Queue()
    p = ctx_fs.Process(target=h.queue_echo, args=(q_in, q_out, len(cases)))
    p.start()
    for obj in cases:
        q_in.put(obj)
    cases[0][:] = 0                 # after put: must not show through
    back = [q_out.get(timeout=30) for _ in cases]
    expected = h.buffer_cases(N, 12)
    assert [h.same_case(a, b) for a, b in zip(expected, back)] == [True] * len(cases)
    _join(p)


@pytest.mark.timeout(90)
def test_every_buffer_type_through_a_pool(ctx_fs):
    cases = h.buffer_cases(N, 13)
    with ctx_fs.Pool(2) as pool:
        back = pool.map(h.identity, cases, chunksize=1)
    assert [h.same_case(a, b) for a, b in zip(cases, back)] == [True] * len(cases)


@pytest.mark.timeout(60)
def test_pool_results_keep_their_values_when_the_worker_reuses_its_array():
    ctx = polyproc.get_context("fork")
    with ctx.Pool(1) as pool:
        results = [pool.apply(h.refill_and_return, (v,)) for v in (1, 2, 3)]
        first = results[0]
        del results[1:]
        gc.collect()                # the worker may now refill those segments
        more = pool.map(h.refill_and_return, [4, 5, 6], chunksize=1)
    assert (first == 1).all()
    assert [int(r[0]) for r in more] == [4, 5, 6] and all((r == r[0]).all() for r in more)


@pytest.mark.timeout(60)
def test_every_buffer_type_through_a_manager():
    ctx = polyproc.get_context("fork")
    cases = h.buffer_cases(N, 14)
    with ctx.Manager() as manager:
        shared = manager.dict()
        for i, obj in enumerate(cases):
            shared[i] = obj
        back = [shared[i] for i in range(len(cases))]
    assert [h.same_case(a, b) for a, b in zip(cases, back)] == [True] * len(cases)


@pytest.mark.timeout(60)
def test_executor_arguments_and_results():
    arr = pattern(N, 15)
    with polyproc.get_context("fork").Executor(2) as executor:
        total = executor.submit(h.array_checksum, arr).result(timeout=30)
        back = executor.submit(h.identity, arr).result(timeout=30)
    assert total == h.array_checksum(arr)
    assert np.array_equal(back, arr)


@pytest.mark.timeout(60)
def test_a_reused_tracker_descriptor_gets_no_messages(tmp_path):
    ctx = polyproc.get_context("fork")
    ser.loads(ser.dumps(pattern(N)))   # this process is connected: children inherit it
    assert _shm_tracker._fd is not None
    parent, child = ctx.Pipe()
    p = ctx.Process(target=h.reuse_tracker_fd_then_send,
                    args=(str(tmp_path / "victim"), child))
    p.start()
    assert parent.poll(30)
    assert np.array_equal(parent.recv(), pattern(2 * MiB, 16))
    assert parent.recv() == 0          # nothing was written into the file
    _join(p)


# -- A real, tiny /dev/shm -----------------------------------------------------------------

def _tiny_dev_shm_available() -> bool:
    import shutil
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
        capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.timeout(90)
def test_a_real_full_dev_shm_falls_back_to_the_pipe():
    if not _tiny_dev_shm_available():
        pytest.skip("needs root and unshare to mount a 2 MiB /dev/shm in a private namespace")
    body = """
        import warnings
        from polyproc._transport import shm_cache as _shm_pool
        r, w = ctx.Pipe()
        p = ctx.Process(target=h.echo, args=(w,))
        p.start()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for size in (1536 << 10, 4 << 20, 1536 << 10, 3 << 20):
                arr = h.pattern(size, size % 251)
                r.send(arr)
                back = r.recv()
                print("SIZE", size, bool(np.array_equal(back, arr)), flush=True)
                del back
        r.send(None)
        p.join(30)
        print("WARNED", any("shared memory unavailable" in str(x.message) for x in caught))
        import gc; gc.collect(); _shm_pool.trim()
        print("LEFT", len(os.listdir("/dev/shm")), flush=True)
    """
    code = (SESSION_PROGRAM_HEAD.format(tests=os.path.dirname(__file__))
            + textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if k != _shm_tracker.SESSION_ENV}
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         'mount -t tmpfs -o size=2m tmpfs /dev/shm && exec "$0" -c "$1"',
         sys.executable, code],
        env=env, capture_output=True, text=True, timeout=80)
    lines = [line.split() for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, proc.stderr[-2000:]
    sizes = [words[1:] for words in lines if words[0] == "SIZE"]
    assert sizes == [[str(1536 << 10), "True"], [str(4 << 20), "True"],
                     [str(1536 << 10), "True"], [str(3 << 20), "True"]]
    assert ["WARNED", "True"] in lines     # 4 MiB and 3 MiB went in-band
    assert ["LEFT", "0"] in lines


@pytest.mark.timeout(60)
def test_a_stopped_tracker_never_hangs_a_sender():
    proc = _run_session("""
        import warnings
        from polyproc._transport import serialization as ser, tracker as _shm_tracker
        ser.loads(ser.dumps(h.pattern(2 << 20, 1)))    # tracker up, connected
        print("STOP_IT", flush=True)
        sys.stdin.readline()
        n = 0
        try:
            while n < 200000:                           # fill its socket
                _shm_tracker.register(f"/{_shm.session_prefix()}fake{n}")
                n += 1
            print("BUSY never", flush=True)
        except _shm_tracker.TrackerBusyError:
            print("BUSY", n, flush=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            payload = ser.dumps(h.pattern(4 << 20, 2))  # needs a new segment
        print("FALLBACK", payload[:4] != ser.MAGIC,
              any("not reading" in str(x.message) for x in caught), flush=True)
        print("SAME", bool(np.array_equal(ser.loads(payload), h.pattern(4 << 20, 2))), flush=True)
    """)
    session_text, prefix = _read_tag(proc, "SESSION")
    _read_tag(proc, "STOP_IT")
    (tracker,) = _tracker_of(session_text)
    tracker.suspend()
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        busy = _read_tag(proc, "BUSY")
        assert busy != ["never"] and int(busy[0]) > 0
        assert _read_tag(proc, "FALLBACK") == ["True", "True"]
        assert _read_tag(proc, "SAME") == ["True"]
    finally:
        tracker.resume()
    assert proc.wait(30) == 0
    _assert_session_cleaned(session_text, prefix)


@pytest.mark.timeout(60)
def test_children_share_the_session_of_a_parent_that_only_imported_polyproc(tmp_path):
    code = textwrap.dedent(f"""
        import os
        import polyproc                      # nothing else of polyproc
        WRITE = ("import os; open({{!r}}, 'w').write("
                 "os.environ.get('POLYPROC_SHM_SESSION', ''))")
        if __name__ == "__main__":
            mine = os.environ.get("POLYPROC_SHM_SESSION")
            for method in ("spawn", "forkserver", "fork"):
                path = {str(tmp_path)!r} + "/" + method
                # exec: a target that imports nothing of polyproc here
                p = polyproc.get_context(method).Process(
                    target=exec, args=(WRITE.format(path),))
                p.start()
                p.join(30)
                print(method, bool(mine) and open(path).read() == mine, flush=True)
    """)
    script = tmp_path / "main.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k != _shm_tracker.SESSION_ENV}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=50)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["spawn", "True", "forkserver", "True", "fork", "True"]
