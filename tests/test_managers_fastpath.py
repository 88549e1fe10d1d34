"""polyproc.managers: the shared-memory fast path of call connections.

The channel is tested on its own (a socket pair, both ends in this process,
or one end in a forked child), then inside a manager.
"""
from __future__ import annotations

import os
import socket
import threading
import time

import pytest

import _manager_helpers as helpers
import polyproc
from polyproc._managers import fastpath
from polyproc._exceptions import ManagerProtocolError
from polyproc._managers.wire import Channel

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not fastpath.available(),
                       reason="the fast path needs Linux memfd on x86-64"),
]


def channel_pair() -> tuple[fastpath.FastChannel, fastpath.FastChannel]:
    """A client end and a server end over a Unix socket pair, set up
    through the same offer/accept exchange a manager uses."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    result = {}
    server = threading.Thread(
        target=lambda: result.setdefault("segment", fastpath.accept_segment(b)))
    server.start()
    client_segment = fastpath.offer_segment(a, True)
    server.join(5)
    assert client_segment is not None and result["segment"] is not None
    client = fastpath.FastChannel(Channel(a, 2**30, 5.0), client_segment, 0)
    server_end = fastpath.FastChannel(Channel(b, 2**30, 5.0), result["segment"], 1)
    return client, server_end


def test_messages_of_every_size_arrive_in_order():
    client, server = channel_pair()
    try:
        small, large = b"x" * 100, os.urandom(fastpath.AREA + 12345)
        for payload in (small, large, b"", small, large):
            client.send(payload)
            assert server.recv() == payload
            server.send(payload[::-1])
            assert client.recv() == payload[::-1]
    finally:
        client.close()
        server.close()


def test_oneway_then_request_both_arrive():
    client, server = channel_pair()
    try:
        client.send_oneway(b"release these")
        client.send(b"then this call")
        got = {server.recv(), server.recv()}
        assert got == {b"release these", b"then this call"}
    finally:
        client.close()
        server.close()


def test_sleeping_receiver_is_woken():
    client, server = channel_pair()
    try:
        server.spin.budget = 0                 # straight to sleep
        received = []
        t = threading.Thread(target=lambda: received.append(server.recv()))
        t.start()
        # Until the server end sleeps, a message could be caught spinning.
        deadline = time.monotonic() + 5
        while not client._out[fastpath._SLEEPING]:
            assert time.monotonic() < deadline, "the receiver never slept"
            time.sleep(0.001)
        start = time.monotonic()
        client.send(b"wake up")
        t.join(5)
        assert received == [b"wake up"]
        assert time.monotonic() - start < 0.5
    finally:
        client.close()
        server.close()


def test_lost_wakeup_costs_at_most_the_receive_timeout():
    # A sender that publishes without waking a sleeping receiver (which the
    # fence rules out on x86-64) must not leave it asleep forever.
    client, server = channel_pair()
    try:
        server.spin.budget = 0
        received = []
        t = threading.Thread(target=lambda: received.append(server.recv()))
        t.start()
        deadline = time.monotonic() + 5
        while not client._out[fastpath._SLEEPING]:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        client._out_data[:4] = b"late"
        client._out[fastpath._LENGTH] = 4
        client._out[fastpath._SEQ] = 1          # published, no wake-up byte
        t.join(3)
        assert received == [b"late"]
    finally:
        client.close()
        server.close()


def test_receiver_sees_peer_close_while_sleeping():
    client, server = channel_pair()
    server.spin.budget = 0
    t, errors = helpers.call_in_thread(server.recv)
    deadline = time.monotonic() + 5
    while not client._out[fastpath._SLEEPING]:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    client.close()
    t.join(5)
    server.close()
    assert len(errors) == 1 and isinstance(errors[0], EOFError)


def test_oversized_length_is_a_protocol_error():
    client, server = channel_pair()
    try:
        client._out[fastpath._LENGTH] = fastpath.AREA + 1
        client._out[fastpath._SEQ] = 1
        with pytest.raises(ManagerProtocolError):
            server.recv()
    finally:
        client.close()
        server.close()


def test_spin_policy_backs_off_and_probes_again():
    policy = fastpath.SpinPolicy()
    assert policy.budget == policy.MAX_NS
    while policy.budget:
        policy.miss()
    for _ in range(policy.PROBE_EVERY - 1):
        policy.slept()
        assert policy.budget == 0
    policy.slept()
    assert policy.budget == policy.MAX_NS      # a probe gets the whole budget
    policy.miss()
    assert 0 < policy.budget < policy.MAX_NS
    for _ in range(10):
        policy.hit()
    assert policy.budget == policy.MAX_NS


def test_segment_must_be_sealed_and_of_the_right_size():
    fd = os.memfd_create("not-sealed", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, fastpath.SEGMENT_SIZE)
        with pytest.raises(ManagerProtocolError, match="sealed"):
            fastpath.map_segment(fd)
        os.ftruncate(fd, 4096)
        with pytest.raises(ManagerProtocolError, match="size"):
            fastpath.map_segment(fd)
    finally:
        os.close(fd)


def test_server_refuses_a_bad_offer_and_both_stay_on_the_socket():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        fd = os.memfd_create("too-small", os.MFD_CLOEXEC)
        os.ftruncate(fd, 4096)
        socket.send_fds(a, [b"M"], [fd])
        os.close(fd)
        assert fastpath.accept_segment(b) is None
        assert a.recv(1) == b"N"
    finally:
        a.close()
        b.close()


# --- inside a manager ----------------------------------------------------------

def test_local_call_connections_use_the_fast_path():
    with polyproc.Manager() as m:
        d = m.dict()
        d["k"] = "v"
        client = d._client
        assert isinstance(client.channel(), fastpath.FastChannel)
        assert type(client._lifeline) is Channel          # carries nothing


def test_tcp_connections_stay_on_the_socket():
    with polyproc.managers.SyncManager(address=("127.0.0.1", 0),
                                       authkey=b"k") as m:
        d = m.dict()
        d["k"] = "v"
        assert d["k"] == "v"
        assert type(d._client.channel()) is Channel


def test_large_values_and_many_releases_through_the_fast_path():
    with polyproc.Manager() as m:
        d = m.dict()
        big = list(range(50_000))             # a pickle larger than the area
        d["big"] = big
        assert d["big"] == big
        baseline = m._number_of_objects()
        for i in range(200):
            lst = m.list([i])
            assert lst[0] == i
            del lst                            # DecRef travels on the socket
        d["after"] = 1                         # flushes the last releases
        assert m._number_of_objects() == baseline or _settles(m, baseline)


def _settles(m, baseline) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if m._number_of_objects() == baseline:
            return True
        time.sleep(0.02)
    return False


def test_call_that_blocks_in_the_server_wakes_a_sleeping_client():
    with polyproc.Manager() as m:
        ev = m.Event()
        timer = threading.Timer(0.3, ev.set)
        timer.start()
        start = time.monotonic()
        assert ev.wait(10) is True             # the client spun, then slept
        assert 0.25 < time.monotonic() - start < 5
        timer.join(5)


def test_threads_calling_at_once_each_get_their_own_answers():
    with polyproc.Manager() as m:
        d = m.dict()
        errors = []

        def hammer(tid: int) -> None:
            try:
                for i in range(300):
                    d[(tid, i)] = tid * i
                    if d[(tid, i)] != tid * i:
                        errors.append((tid, i))
            except Exception as exc:          # pragma: no cover - reported
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not errors
        assert len(d) == 1200


def _hammer_dict(d, stop) -> None:
    while not stop.is_set():
        d["hot"] = d.get("hot", 0) + 1


def test_a_hot_client_does_not_starve_another(ctx_fs):
    with ctx_fs.Manager() as m:
        d, stop = m.dict(), ctx_fs.Event()
        hot = ctx_fs.Process(target=_hammer_dict, args=(d, stop))
        hot.start()
        try:
            deadline = time.monotonic() + 20
            while d.get("hot", 0) < 100:
                assert time.monotonic() < deadline, "the hot client never ran"
            worst = 0.0
            for i in range(50):
                start = time.monotonic()
                d[i] = i
                worst = max(worst, time.monotonic() - start)
            # The hot client's server thread spins between its calls; ours
            # must still be served promptly (a few ms at worst, not seconds).
            assert worst < 0.5, f"a call took {worst:.3f} s"
        finally:
            stop.set()
            hot.join(10)


def test_both_sides_spin_again_after_both_stopped():
    # When both ends sleep, each one's answer comes only after a wake-up of
    # the other; the probes must still bring spinning back (a short probe
    # never would, and a loop of calls would stay at the socket's speed).
    with helpers.SpinProbeManager() as m:
        probe = m.ConnectionSpin()
        chan = probe._client.channel()
        assert isinstance(chan, fastpath.FastChannel)
        probe.set_budget(0)
        chan.spin.budget = 0
        for _ in range(20 * fastpath.SpinPolicy.PROBE_EVERY):
            probe.budget()
            if chan.spin.budget and probe.budget():
                break
        assert chan.spin.budget > 0, "the client never spun again"
        assert probe.budget() > 0, "the server never spun again"


# --- what a peer with the key but a broken client can send ------------------------

TIMEOUT = 0.5


@pytest.fixture(scope="module")
def unix_manager():
    m = polyproc.managers.SyncManager(authkey=b"key",
                                      ctx=polyproc.get_context("fork"),
                                      handshake_timeout=TIMEOUT,
                                      frame_timeout=TIMEOUT)
    m.start()
    yield m
    m.shutdown()


def authenticated_unix(address) -> socket.socket:
    from polyproc._managers.wire import client_handshake
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(address)
    client_handshake(sock, b"key", address)
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        pass
    return True


def still_serving(m) -> bool:
    result = []
    t = threading.Thread(target=lambda: result.append(m.dict({"a": 1})["a"]))
    t.start()
    t.join(10)
    return result == [1]


@pytest.mark.parametrize("offer", [b"Z", b"M"])
def test_bad_offer_ends_that_connection_only(unix_manager, offer):
    sock = authenticated_unix(unix_manager.address)
    sock.sendall(offer)                    # not an offer; or one without a descriptor
    assert closed_by_server(sock, 5)
    assert still_serving(unix_manager)


def test_silent_after_the_handshake_is_dropped(unix_manager):
    sock = authenticated_unix(unix_manager.address)
    start = time.monotonic()
    assert closed_by_server(sock, 10 * TIMEOUT + 5)
    assert time.monotonic() - start >= TIMEOUT * 0.9
    assert still_serving(unix_manager)


def test_refused_segment_leaves_the_connection_on_the_socket(unix_manager):
    from polyproc._managers.wire import Control, Hello, Ok, decode, encode
    sock = authenticated_unix(unix_manager.address)
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    os.ftruncate(fd, fastpath.SEGMENT_SIZE)
    socket.send_fds(sock, [b"M"], [fd])
    os.close(fd)
    assert sock.recv(1) == b"N"
    chan = Channel(sock, 1 << 20, 5.0)
    chan.send(encode(Hello(os.urandom(16), False)))
    chan.send(encode(Control("dummy")))
    assert type(decode(chan.recv())) is Ok
    chan.close()


def test_lying_lane_length_ends_that_connection_only(unix_manager):
    from polyproc._managers.wire import Hello, encode
    sock = authenticated_unix(unix_manager.address)
    segment = fastpath.offer_segment(sock, True)
    assert segment is not None
    chan = Channel(sock, 1 << 20, 5.0)
    chan.send(encode(Hello(os.urandom(16), False)))
    fast = fastpath.FastChannel(chan, segment, 0)
    fast._out[fastpath._LENGTH] = 2**62
    fast._out[fastpath._SEQ] = 1
    if fast._out[fastpath._SLEEPING]:
        sock.send(b"W")
    assert closed_by_server(sock, 5)
    assert still_serving(unix_manager)


def _fence_then_exit() -> None:
    fastpath._fence()                     # would hang on an inherited held lock
    with fastpath._spin_token:
        pass


def test_fork_while_another_thread_holds_the_fast_path_locks():
    ctx = polyproc.get_context("fork")
    with fastpath._fence_lock, fastpath._spin_token:   # as a thread mid-call
        child = ctx.Process(target=_fence_then_exit)
        child.start()
    child.join(10)
    assert child.exitcode == 0


def test_spinning_stops_when_the_calls_stop():
    import psutil
    with polyproc.Manager() as m:
        d = m.dict()
        for i in range(2000):                  # both sides spinning by now
            d[i] = i
        server = psutil.Process(m._process.pid)
        me = psutil.Process()
        idle = threading.Event()
        before = (sum(server.cpu_times()[:2]), sum(me.cpu_times()[:2]))
        idle.wait(1.0)                         # a second without calls
        after = (sum(server.cpu_times()[:2]), sum(me.cpu_times()[:2]))
        # Spinning is bounded (100 us per wait): an idle second costs the
        # server next to nothing, not a core.
        assert after[0] - before[0] < 0.1, f"server used {after[0] - before[0]:.2f} s"
        assert after[1] - before[1] < 0.2


@pytest.mark.parametrize("junk", [b"?", b"F" + bytes(8)])
def test_uncounted_bytes_on_the_socket_end_that_connection_only(unix_manager, junk):
    # A peer that writes to the socket what the fast path never announces:
    # a byte that is neither a wake-up nor a frame, or a frame it never
    # counted.  The server thread must give up the connection, not spin.
    from polyproc._managers.wire import Hello, encode
    sock = authenticated_unix(unix_manager.address)
    segment = fastpath.offer_segment(sock, True)
    chan = Channel(sock, 1 << 20, 5.0)
    chan.send(encode(Hello(os.urandom(16), False)))
    fast = fastpath.FastChannel(chan, segment, 0)
    deadline = time.monotonic() + 5            # until the server sleeps
    while not fast._out[fastpath._SLEEPING]:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    sock.sendall(junk)
    assert closed_by_server(sock, 15)
    assert still_serving(unix_manager)
