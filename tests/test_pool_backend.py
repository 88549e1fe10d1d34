"""The Backend protocol (polyproc/_pool/backend.py), tested on every backend there is.

Pool and Executor use a backend through ``Backend`` alone, so each backend
loaded by name must have all of it and keep its contract: chunks submitted
are delivered to their sinks, exactly once per task, and ``close``/``join``
end the workers.  A new backend (Dask) is picked up by these tests as soon
as its module exists.
"""
from __future__ import annotations

import pickle
import threading

import pytest

import polyproc
from polyproc._pool import backend as backends
from polyproc._pool import messages as m
from polyproc._pool.chunks import Transport, function_blob, make_chunk
from polyproc._pool.options import WorkerOptions
from polyproc._transport import serialization

WAIT = 30


class RecordingSink:
    """Collects what a backend delivers; ``done`` once *expected* tasks came."""

    cancelled = False

    def __init__(self, expected: int):
        self.expected = expected
        self.outcomes: dict[int, object] = {}
        self.aborted: BaseException | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()

    def deliver(self, start: int, values: list, errors: dict) -> None:
        with self._lock:
            for i, value in enumerate(values):
                assert start + i not in self.outcomes, "a task was delivered twice"
                self.outcomes[start + i] = errors.get(i, value)
            if len(self.outcomes) >= self.expected:
                self.done.set()

    def abort(self, exc: BaseException) -> None:
        self.aborted = exc
        self.done.set()


@pytest.fixture(params=backends.available())
def backend(request):
    aborts: list[BaseException] = []  # abort_all: the backend failed everything
    options = WorkerOptions(2)
    if request.param == "dask":   # on the session's real cluster (conftest.py)
        options = WorkerOptions(2, cluster=request.getfixturevalue("dask_cluster"))
    made = backends.load(request.param)(options, polyproc.get_context("fork"),
                                        aborts.append)
    made.aborts = aborts
    yield made
    made.terminate()


def test_the_backends_are_found_by_name():
    assert {"process", "thread", "dask"} <= set(backends.available())
    with pytest.raises(ValueError, match=r"no pool backend named 'nope'.*'process'.*'thread'"):
        backends.load("nope")


def test_a_backend_has_everything_pool_and_executor_use(backend):
    missing = [name for name in _protocol_members() if not hasattr(backend, name)]
    assert not missing, f"{type(backend).__name__} lacks {missing}"
    assert backend.size == 2
    assert isinstance(backend.transport, Transport)
    assert backend.broken is None


def _protocol_members() -> list[str]:
    names = set(backends.Backend.__annotations__)
    names |= {name for name, value in vars(backends.Backend).items()
              if callable(value) and not name.startswith("_")}
    return sorted(names)


def test_a_backend_delivers_every_task_once_then_closes(backend):
    sink = RecordingSink(10)
    transport = backend.transport
    fn = function_blob(abs, transport)
    chunks = [make_chunk(fn, "abs", m.CALL_MAP, [-i for i in range(s, s + 5)], s, sink,
                         None, 0, transport) for s in (0, 5)]
    backend.submit(chunks)
    assert sink.done.wait(WAIT)
    assert sink.aborted is None and backend.aborts == []
    assert sink.outcomes == {i: i for i in range(10)}
    assert backend.task_seconds(fn) is not None
    backend.close()
    backend.join(WAIT)
    assert backend.worker_processes() == [] or \
        all(not p.is_alive() for p in backend.worker_processes())


def test_in_band_chunks_never_use_shared_memory():
    # A remote backend's transport: the payload is self-contained (no
    # segment names), also for the unfinished part of a chunk sent again.
    np = pytest.importorskip("numpy")
    arrays = [np.full(serialization.ZERO_COPY_THRESHOLD, i, dtype=np.uint8)
              for i in range(2)]
    shared = make_chunk(b"f", "f", m.CALL_MAP, arrays, 0, None, None, 0,
                        Transport.SHARED_MEMORY)
    in_band = make_chunk(b"f", "f", m.CALL_MAP, arrays, 0, None, None, 0,
                         Transport.IN_BAND)
    try:
        assert bytes(shared.payload[:4]) == serialization.MAGIC
        for chunk, expected in ((in_band, arrays), (in_band.subchunk(1, 2), arrays[1:])):
            # Self-contained bytes, the large buffers left out (views of the
            # arrays) to be sent once.
            assert bytes(chunk.payload[:4]) != serialization.MAGIC
            assert [len(b) for b in chunk.payload.buffers] == [a.nbytes for a in expected]
            assert len(chunk.payload) < serialization.ZERO_COPY_THRESHOLD
            loaded = pickle.loads(chunk.payload, buffers=chunk.payload.buffers)
            assert len(loaded) == len(expected)
            assert all(np.array_equal(x, y) for x, y in zip(loaded, expected))
    finally:
        shared.release()


def test_in_band_chunks_name_the_argument_that_cannot_be_pickled():
    with pytest.raises(polyproc.SerializationError, match=r"argument of task 4 of f\(\)"):
        make_chunk(b"f", "f", m.CALL_MAP, [1, threading.Lock()], 3, None, None, 0,
                   Transport.IN_BAND)


def test_threads_take_the_objects_themselves():
    lock = threading.Lock()
    chunk = make_chunk(function_blob(id, Transport.NONE), "id", m.CALL_MAP, [lock], 0,
                       None, None, 0, Transport.NONE)
    assert chunk.func is id and chunk.payload is None and chunk.items == [lock]
    assert chunk.subchunk(0, 1).payload is None
