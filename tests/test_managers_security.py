"""polyproc.managers: nobody gets in without the key, and bad input is survived."""
from __future__ import annotations

import hmac
import os
import pickle
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

import psutil
import pytest

import _manager_helpers as helpers
import polyproc
from polyproc import managers
from polyproc._exceptions import (AuthenticationError, FrameTooLargeError,
                                  InsecureAddressError)
from polyproc._managers.wire import (MAGIC, Channel, Control, Failed, Hello,
                                    Ok, client_handshake, decode, encode)

pytestmark = pytest.mark.timeout(30)

KEY = b"correct horse battery staple"
TIMEOUT = 0.5       # the server's handshake and frame timeouts in this module


@pytest.fixture(scope="module")
def manager():
    m = managers.SyncManager(address=("127.0.0.1", 0), authkey=KEY,
                             ctx=polyproc.get_context("fork"),
                             handshake_timeout=TIMEOUT, frame_timeout=TIMEOUT,
                             max_frame_size=256 * 1024)
    m.start()
    yield m
    m.shutdown()


def fresh_client_works(manager) -> bool:
    """A new connection (new thread: new handshake) gets served."""
    result = []

    def call():
        d = manager.dict()
        d["ok"] = 1
        result.append(d["ok"])

    t = threading.Thread(target=call)
    t.start()
    t.join(10)
    return result == [1]


def authenticated(address, key=KEY) -> tuple[socket.socket, Channel]:
    sock = socket.create_connection(address, timeout=5)
    client_handshake(sock, key, address)
    chan = Channel(sock, 1 << 20, 5.0)
    chan.send(encode(Hello(os.urandom(16), False)))
    sock.settimeout(5)
    return sock, chan


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes *sock* within *within* seconds."""
    sock.settimeout(within)
    start = time.monotonic()
    try:
        while sock.recv(4096):
            if time.monotonic() - start > within:
                return False
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        pass
    return True


# --- authentication ------------------------------------------------------------

def test_wrong_key_is_refused_and_server_goes_on(manager):
    intruder = managers.SyncManager(address=manager.address, authkey=b"wrong")
    with pytest.raises(AuthenticationError, match="rejected the authentication key"):
        intruder.connect()
    assert fresh_client_works(manager)


def test_handshake_is_hmac_sha256_and_md5_is_refused(manager):
    for algorithm, accepted in (("md5", False), ("sha256", True)):
        sock = socket.create_connection(manager.address, timeout=5)
        greeting = sock.recv(len(MAGIC) + 32, socket.MSG_WAITALL)
        assert greeting.startswith(MAGIC)
        digest = hmac.new(KEY, b"client" + greeting[len(MAGIC):],
                          algorithm).digest()
        sock.sendall(digest.ljust(32, b"\0") + os.urandom(32))
        status = sock.recv(33, socket.MSG_WAITALL)
        assert (status[0] == 1) is accepted
        sock.close()


def test_client_checks_the_server_knows_the_key():
    # A fake server that sends a challenge but cannot answer the client's.
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()

    def fake_server():
        conn, _ = listener.accept()
        conn.sendall(MAGIC + os.urandom(32))
        conn.recv(64, socket.MSG_WAITALL)
        conn.sendall(b"\x01" + os.urandom(32))
        conn.recv(1)
        conn.close()

    t = threading.Thread(target=fake_server, daemon=True)
    t.start()
    try:
        with pytest.raises(AuthenticationError, match="could not prove"):
            managers.SyncManager(address=address, authkey=KEY).connect()
    finally:
        listener.close()
        t.join(5)


def test_non_loopback_bind_without_authkey_is_refused():
    m = managers.SyncManager(address=("0.0.0.0", 0))
    with pytest.raises(InsecureAddressError, match="explicit authkey"):
        m.get_server()
    with pytest.raises(ValueError):
        m.start()
    server = managers.SyncManager(address=("0.0.0.0", 0),
                                  authkey=b"chosen").get_server()
    server.close()
    loopback = managers.SyncManager(address=("127.0.0.1", 0)).get_server()
    loopback.close()


# --- malformed input -------------------------------------------------------------

def test_garbage_before_authentication(manager):
    sock = socket.create_connection(manager.address, timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(200))
    assert closed_by_server(sock, 5)
    assert fresh_client_works(manager)


def test_silent_client_is_dropped_after_timeout(manager):
    sock = socket.create_connection(manager.address, timeout=5)
    start = time.monotonic()
    assert closed_by_server(sock, 10 * TIMEOUT + 5)
    assert time.monotonic() - start >= TIMEOUT * 0.9
    assert fresh_client_works(manager)


def test_huge_length_header_after_authentication(manager):
    rss_before = psutil.Process(manager._process.pid).memory_info().rss
    sock, _chan = authenticated(manager.address)
    sock.sendall(struct.pack("!Q", 2**62) + b"x" * 100)
    assert closed_by_server(sock, 5)
    rss_after = psutil.Process(manager._process.pid).memory_info().rss
    assert rss_after - rss_before < 32 * 2**20
    assert fresh_client_works(manager)


def test_half_sent_frame_is_timed_out(manager):
    sock, _chan = authenticated(manager.address)
    sock.sendall(struct.pack("!Q", 200_000) + b"partial")
    start = time.monotonic()
    assert closed_by_server(sock, 10 * TIMEOUT + 5)
    assert time.monotonic() - start >= TIMEOUT * 0.9
    assert fresh_client_works(manager)


def test_garbage_frame_after_authentication_gets_an_error_reply(manager):
    sock, chan = authenticated(manager.address)
    chan.send(b"\x80\x05garbage that is no pickle")
    reply = decode(chan.recv())
    assert type(reply) is Failed
    assert "cannot unpickle" in str(reply.exception)
    chan.send(pickle.dumps(("a tuple", "but no message")))
    reply = decode(chan.recv())
    assert type(reply) is Failed
    assert "not a manager message" in str(reply.exception)
    chan.send(encode(Control("dummy")))          # the connection goes on
    assert type(decode(chan.recv())) is Ok
    sock.close()


def test_oversized_request_raises_in_caller(manager):
    # (Below the zero-copy threshold: larger buffers travel through shared
    # memory between local processes and the frame stays small.)
    d = manager.dict()
    with pytest.raises(FrameTooLargeError, match="max_frame_size"):
        d["big"] = b"x" * (512 * 1024)
    d["small"] = 1                               # connection still usable
    assert d.copy() == {"small": 1}


def test_many_clients_at_once(manager):
    idle = [socket.create_connection(manager.address, timeout=5)
            for _ in range(60)]
    try:
        lock, ns = manager.Lock(), manager.Namespace(count=0)
        threads = [threading.Thread(target=helpers.incr_namespace,
                                    args=(ns, lock, 10)) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert ns.count == 120
    finally:
        for s in idle:
            s.close()


# --- TLS ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "1",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate: {exc}")
    return str(cert), str(key)


def test_tls_remote_manager(certificate):
    cert, key = certificate
    server = subprocess.Popen(
        [sys.executable, helpers.__file__, "serve-tls", KEY.hex(), cert, key],
        stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        client_context = ssl.create_default_context(cafile=cert)
        m = helpers.RemoteClient(address=("127.0.0.1", port), authkey=KEY,
                                 ssl_context=client_context)
        m.connect()
        q = m.get_queue()
        q.put("over tls")
        assert q.get(timeout=5) == "over tls"
        m.shutdown()
        # Without TLS the client cannot even get a greeting.
        plain = socket.create_connection(("127.0.0.1", port), timeout=5)
        plain.settimeout(2)
        with pytest.raises((socket.timeout, TimeoutError, ConnectionError)):
            data = plain.recv(64)
            assert not data.startswith(MAGIC)
            raise ConnectionError("closed")
        plain.close()
    finally:
        server.kill()
        server.wait(10)


def test_connection_flood_is_bounded_and_survived():
    m = managers.SyncManager(address=("127.0.0.1", 0), authkey=KEY,
                             ctx=polyproc.get_context("fork"),
                             handshake_timeout=TIMEOUT, max_pending=4)
    m.start()
    try:
        flood = [socket.create_connection(m.address, timeout=5)
                 for _ in range(24)]
        # Beyond max_pending the server closes connections on accept, at
        # once; the others are dropped after the handshake timeout.
        closed = sum(closed_by_server(s, 10 * TIMEOUT + 5) for s in flood)
        assert closed == len(flood)
        for s in flood:
            s.close()
        assert fresh_client_works(m)
    finally:
        m.shutdown()
