"""polyproc.managers: the stdlib's "Using a remote manager" pattern, for real.

The server runs ``get_server().serve_forever()`` in its own interpreter
(subprocess), a producer connects from another one, and this process
consumes: a queue and a dict shared by three processes over TCP.
"""
from __future__ import annotations

import os
import select
import subprocess
import sys

import pytest

import _manager_helpers as helpers
from polyproc._exceptions import AuthenticationError, ManagerConnectionError

pytestmark = pytest.mark.timeout(40)

KEY = os.urandom(16)


def start_server(*extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, helpers.__file__, "serve",
                             KEY.hex(), *extra], stdout=subprocess.PIPE,
                            text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    if not ready:
        proc.kill()
        pytest.fail("the manager server did not report its port in 20 s")
    return proc, int(proc.stdout.readline())


@pytest.fixture
def remote_server():
    proc, port = start_server()
    yield port
    proc.kill()
    proc.wait(10)


def client(port: int, authkey: bytes = KEY) -> helpers.RemoteClient:
    m = helpers.RemoteClient(address=("127.0.0.1", port), authkey=authkey)
    m.connect()
    return m


def test_queue_and_dict_shared_between_separate_processes(remote_server):
    port = remote_server
    producer = subprocess.run(
        [sys.executable, helpers.__file__, "produce", str(port), KEY.hex(), "50"],
        timeout=30)
    assert producer.returncode == 0
    m = client(port)
    q, d = m.get_queue(), m.get_dict()
    assert [q.get(timeout=5) for _ in range(50)] == list(range(50))
    assert d["producer_pid"] not in (os.getpid(), None)
    d["consumer"] = "seen"
    assert client(port).get_dict()["consumer"] == "seen"   # a second client


def test_remote_proxies_in_child_processes(remote_server, ctx_fs):
    port = remote_server
    m = client(port)
    q = m.get_queue()
    p = ctx_fs.Process(target=helpers.remote_producer, args=(port, KEY, 5))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert sorted(q.get(timeout=5) for _ in range(5)) == list(range(5))
    # A proxy passed to a forked/spawned child reaches the same server.
    d = m.get_dict()
    child = ctx_fs.Process(target=helpers.set_item, args=(d, "from child", 1))
    child.start()
    child.join(30)
    # fork: the child inherits the key; spawn: the proxy carries it while
    # the Process is being spawned (as the stdlib's does).
    assert child.exitcode == 0 and d["from child"] == 1


def test_wrong_key_remote(remote_server):
    with pytest.raises(AuthenticationError):
        client(remote_server, b"not the key")
    assert client(remote_server).get_queue().qsize() == 0


def test_remote_server_killed(remote_server):
    proc, port = start_server()
    q = client(port).get_queue()
    q.put(1)
    proc.kill()
    proc.wait(10)
    with pytest.raises(ManagerConnectionError, match=f"127.0.0.1:{port}"):
        q.put(2)
    with pytest.raises(ManagerConnectionError):
        client(port)
