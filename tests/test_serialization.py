"""polyproc._transport.serialization in one process: formats, zero-copy round trips, faults."""
from __future__ import annotations

import errno
import gc
import pickle
import socket
import warnings

import numpy as np
import pytest

import polyproc
from polyproc._transport import serialization as ser
from polyproc._transport import shm as _shm
from polyproc._transport import shm_cache as _shm_pool
from polyproc._transport import tracker as _shm_tracker
from polyproc._exceptions import SerializationError

from _zero_copy_helpers import Blob, MiB, our_segments, pattern

T = ser.ZERO_COPY_THRESHOLD


def is_zero_copy(payload) -> bool:
    return bytes(payload[:4]) == ser.MAGIC


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test here must leave /dev/shm as it found it."""
    gc.collect()        # what earlier tests (other modules too) left behind
    _shm_pool.trim()
    before = our_segments()
    yield
    gc.collect()        # received objects die: their segments become FREE
    _shm_pool.trim()    # and recycled FREE segments are unlinked
    # Segments of earlier tests may still be going away (the tracker sweeps
    # them asynchronously): only new ones are leaks.
    assert set(our_segments()) <= set(before)


# -- The small path is plain pickle ------------------------------------------

@pytest.mark.parametrize("obj", [
    None, 42, "text", (1, "a", [2.0]), {"k": b"v"}, np.arange(10),
    bytearray(b"x" * 100), pattern(T // 2)])
def test_small_objects_are_plain_protocol_5_pickles(obj):
    payload = ser.dumps(obj)
    assert payload == pickle.dumps(obj, 5)
    back = ser.loads(payload)
    if isinstance(obj, np.ndarray):
        assert np.array_equal(back, obj)
    else:
        assert back == obj


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_any_plain_pickle_loads(protocol):
    obj = {"a": [1, 2.5, "x"], "b": (None, True)}
    assert ser.loads(pickle.dumps(obj, protocol)) == obj
    assert ser.loads(memoryview(pickle.dumps(obj, protocol))) == obj


def test_empty_or_garbage_payload_is_a_serialization_error():
    with pytest.raises(SerializationError):
        ser.loads(b"")
    with pytest.raises(SerializationError, match="bad header"):
        ser.loads(ser.MAGIC + pickle.dumps("not a header"))
    with pytest.raises(SerializationError):
        ser.loads(ser.MAGIC + b"garbage")


# -- Round trips of each buffer type, around the threshold -------------------

SIZES = [T // 2, T - 1, T, T + 1, 3 * MiB + 5]


def _expected_zero_copy(obj) -> bool:
    # A buffer of T bytes or more goes out-of-band; a smaller one stays in
    # the stream, which goes to shared memory as a whole if *it* reaches T.
    return len(pickle.dumps(obj, 5)) >= T


@pytest.mark.parametrize("nbytes", SIZES)
def test_numpy_array_round_trip(nbytes):
    arr = pattern(nbytes, seed=3)
    payload = ser.dumps(arr)
    assert is_zero_copy(payload) == _expected_zero_copy(arr)
    assert len(payload) < 1000 or nbytes < T // 2 + 1
    back = ser.loads(payload)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert np.array_equal(back, arr)
    assert back.flags.writeable


@pytest.mark.parametrize("nbytes", SIZES)
def test_bytes_round_trip(nbytes):
    data = bytes(pattern(nbytes, seed=4))
    payload = ser.dumps(data)
    assert is_zero_copy(payload) == _expected_zero_copy(data)
    back = ser.loads(payload)
    assert type(back) is bytes and back == data


@pytest.mark.parametrize("nbytes", SIZES)
def test_bytearray_round_trip(nbytes):
    data = bytearray(pattern(nbytes, seed=5))
    payload = ser.dumps(data)
    assert is_zero_copy(payload) == _expected_zero_copy(data)
    back = ser.loads(payload)
    assert type(back) is bytearray and back == data


@pytest.mark.parametrize("nbytes", SIZES)
def test_memoryview_round_trip(nbytes):
    arr = pattern(nbytes, seed=6)
    view = memoryview(arr)
    payload = ser.dumps(view)  # plain pickle refuses memoryviews
    assert is_zero_copy(payload) == _expected_zero_copy(arr)
    back = ser.loads(payload)
    assert isinstance(back, memoryview)
    assert back.format == view.format and back.shape == view.shape
    assert back.tobytes() == view.tobytes()


def test_memoryview_keeps_format_shape_and_readonly():
    arr = np.arange(3 * T // 8, dtype=np.float64).reshape(3, -1)
    view = memoryview(arr).toreadonly()
    back = ser.loads(ser.dumps(view))
    assert back.format == "d" and back.shape == view.shape and back.readonly
    assert back.tobytes() == view.tobytes()
    strided = memoryview(arr.ravel())[::2]  # not contiguous: copied first
    back = ser.loads(ser.dumps(strided))
    assert back.tobytes() == strided.tobytes()


@pytest.mark.parametrize("nbytes", SIZES)
def test_user_pickle_buffer_type_round_trip(nbytes):
    blob = Blob(bytearray(pattern(nbytes, seed=7)))
    payload = ser.dumps(blob)
    assert is_zero_copy(payload) == _expected_zero_copy(blob)
    back = ser.loads(payload)
    assert bytes(back.data) == bytes(blob.data)


@pytest.mark.parametrize("make", [
    lambda: np.asfortranarray(np.arange(T // 4, dtype=np.float32).reshape(512, -1)),
    lambda: np.arange(T // 2, dtype=np.int64)[::2],           # not contiguous
    lambda: np.zeros(T // 16, dtype=[("a", "f8"), ("b", "i8")]),
    lambda: np.array([{"x": i} for i in range(10)] * 20000, dtype=object),
    lambda: np.float64(3.5),
])
def test_numpy_layouts(make):
    arr = make()
    back = ser.loads(ser.dumps(arr))
    assert back.dtype == arr.dtype and back.shape == np.shape(arr)
    assert np.array_equal(back, arr)
    if isinstance(arr, np.ndarray) and (arr.flags.c_contiguous or arr.flags.f_contiguous):
        assert back.flags.f_contiguous == arr.flags.f_contiguous


def test_read_only_array_comes_back_read_only():
    arr = pattern(2 * T)
    arr.flags.writeable = False
    back = ser.loads(ser.dumps(arr))
    assert not back.flags.writeable
    assert np.array_equal(back, arr)


def test_several_large_buffers_and_small_ones_in_one_object():
    obj = {"big": [pattern(T, i) for i in range(3)], "small": np.arange(5),
           "raw": bytearray(b"r" * 100), "text": "hello"}
    payload = ser.dumps(obj)
    header = ser._read_header(payload)
    assert len(header.buffers) == 3 and isinstance(header.stream, bytes)
    back = ser.loads(payload)
    for i in range(3):
        assert np.array_equal(back["big"][i], pattern(T, i))
    assert np.array_equal(back["small"], np.arange(5))
    assert back["raw"] == obj["raw"] and back["text"] == "hello"


def test_large_stream_without_buffers_goes_to_one_segment():
    obj = [bytes(pattern(T // 2, 1)), bytes(pattern(T // 2 + 10, 2)), list(range(1000))]
    payload = ser.dumps(obj)
    header = ser._read_header(payload)
    assert isinstance(header.stream, _shm.SegmentRef) and header.buffers == ()
    assert ser.loads(payload) == obj


def test_same_array_twice_is_one_buffer_and_stays_shared():
    arr = pattern(T)
    payload = ser.dumps([arr, arr])
    assert len(ser._read_header(payload).buffers) == 1  # pickle's memo
    a, b = ser.loads(payload)
    a[0] ^= 0xFF
    assert b[0] == a[0]  # one object on both sides, as with plain pickle


# -- Copy semantics -------------------------------------------------------------

def test_sender_changes_after_dumps_do_not_show_through():
    arr = pattern(2 * T, seed=8)
    payload = ser.dumps(arr)
    arr[:] = 0
    back = ser.loads(payload)
    assert np.array_equal(back, pattern(2 * T, seed=8))


def test_receiver_changes_do_not_show_in_sender():
    arr = pattern(2 * T, seed=9)
    back = ser.loads(ser.dumps(arr))
    back[:] = 1
    assert np.array_equal(arr, pattern(2 * T, seed=9))


@pytest.fixture(params=["one-shot", "recycled"])
def segment_kind(request, monkeypatch):
    """Run a test with one-shot segments (pool limit 0) and with recycled ones."""
    if request.param == "one-shot":
        monkeypatch.setattr(_shm_pool, "CACHE_LIMIT", 0)
    return request.param


def test_received_array_outlives_everything_but_itself(segment_kind):
    payload = ser.dumps(pattern(2 * T, seed=10))
    back = ser.loads(payload)
    assert ser._read_header(payload).buffers[0].recycled == (segment_kind == "recycled")
    if segment_kind == "one-shot":
        assert our_segments() == []  # unlinked at once; the mapping lives on
    gc.collect()
    _shm_pool.trim()
    assert np.array_equal(back, pattern(2 * T, seed=10))


# -- Recycled segments --------------------------------------------------------------

def test_a_segment_is_refilled_once_its_receiver_is_done():
    first = ser.dumps(pattern(2 * T, seed=1))
    back = ser.loads(first)
    held = ser.dumps(pattern(2 * T, seed=2))    # `back` is alive: a new segment
    ref1, ref2 = (ser._read_header(p).buffers[0] for p in (first, held))
    assert ref1.name != ref2.name
    del back
    gc.collect()
    again = ser.dumps(pattern(2 * T, seed=3))   # refills the first one
    ref3 = ser._read_header(again).buffers[0]
    assert (ref3.name, ref3.generation) == (ref1.name, ref1.generation + 1)
    assert np.array_equal(ser.loads(again), pattern(2 * T, seed=3))
    assert np.array_equal(ser.loads(held), pattern(2 * T, seed=2))
    with pytest.raises(SerializationError, match="no longer exists"):
        ser.loads(first)                        # a stale payload is refused


def test_a_held_array_never_changes_when_the_sender_sends_again():
    back = ser.loads(ser.dumps(pattern(2 * T, seed=4)))
    for seed in range(5, 9):
        other = ser.loads(ser.dumps(pattern(2 * T, seed=seed)))
        assert np.array_equal(other, pattern(2 * T, seed=seed))
        del other
        gc.collect()
    assert np.array_equal(back, pattern(2 * T, seed=4))


def test_sizes_that_do_not_fit_get_their_own_segment():
    small = ser.dumps(pattern(T, 1))
    ser.loads(small)                            # done at once: FREE
    gc.collect()
    big = ser.dumps(pattern(3 * T, 2))          # too big for the free one
    assert ser._read_header(big).buffers[0].name != ser._read_header(small).buffers[0].name
    assert np.array_equal(ser.loads(big), pattern(3 * T, 2))


def test_pool_limit_falls_back_to_one_shot(monkeypatch):
    monkeypatch.setattr(_shm_pool, "CACHE_LIMIT", 3 * T)
    payloads = [ser.dumps(pattern(2 * T, i)) for i in range(3)]
    kinds = [ser._read_header(p).buffers[0].recycled for p in payloads]
    assert kinds == [True, False, False]
    for i, p in enumerate(payloads):
        assert np.array_equal(ser.loads(p), pattern(2 * T, i))


# -- Exactly once: loads, release -----------------------------------------------

def test_release_frees_and_a_later_loads_says_why(segment_kind):
    payload = ser.dumps(pattern(2 * T))
    assert len(our_segments()) == 1
    ser.release(payload)
    _shm_pool.trim()
    assert our_segments() == []
    ser.release(payload)  # twice: harmless
    with pytest.raises(SerializationError, match="no longer exists"):
        ser.loads(payload)


def test_loading_twice_fails_clearly(segment_kind):
    payload = ser.dumps([pattern(T), pattern(T, 1)])
    back = ser.loads(payload)
    with pytest.raises(SerializationError, match="loads exactly once"):
        ser.loads(payload)
    ser.release(payload)  # after loads: harmless...
    _shm_pool.trim()
    assert np.array_equal(back[1], pattern(T, 1))  # ...and `back` is intact


def test_release_of_plain_payloads_is_a_no_op():
    ser.release(pickle.dumps([1, 2], 5))
    ser.release(b"")
    ser.release(ser.MAGIC + b"garbage")


def test_a_missing_segment_fails_clearly_and_frees_the_others(segment_kind):
    payload = ser.dumps([pattern(T, 1), pattern(T, 2)])
    first = ser._read_header(payload).buffers[0]
    _shm.unlink(first.name)
    with pytest.raises(SerializationError, match=first.name):
        ser.loads(payload)
    gc.collect()
    _shm_pool.trim()
    assert our_segments() == []


def test_a_segment_of_the_wrong_size_is_refused():
    payload = ser.dumps(pattern(T))
    header = ser._read_header(payload)
    lying = ser.MAGIC + pickle.dumps(header._replace(
        buffers=(header.buffers[0]._replace(size=T + 4096),)), 5)
    with pytest.raises(SerializationError, match="cannot be mapped"):
        ser.loads(lying)


# -- /dev/shm full, tracker unreachable: fall back to the pipe --------------------

def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(ser, "_warned_fallback", False)


def test_full_dev_shm_falls_back_to_in_band(monkeypatch, fresh_warning):
    monkeypatch.setattr(_shm, "_open_new", _enospc)
    arr = pattern(2 * T, seed=11)
    with pytest.warns(RuntimeWarning, match="shared memory unavailable.*bytes"):
        payload = ser.dumps({"a": arr})
    assert not is_zero_copy(payload) and len(payload) > 2 * T
    assert np.array_equal(ser.loads(payload)["a"], arr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process only
        payload = ser.dumps(bytes(arr))
    assert ser.loads(payload) == bytes(arr)


def test_dev_shm_too_small_mid_write_cleans_up_and_falls_back(monkeypatch, fresh_warning):
    real_write = _shm._write_all

    def half_then_enospc(fd, data, at=0):
        real_write(fd, data[: data.nbytes // 2], at)
        _enospc()

    monkeypatch.setattr(_shm, "_write_all", half_then_enospc)
    obj = [pattern(T, 1), pattern(3 * T, 2)]
    with pytest.warns(RuntimeWarning):
        payload = ser.dumps(obj)
    assert not is_zero_copy(payload)
    back = ser.loads(payload)
    assert np.array_equal(back[1], obj[1])
    # the no_leaks fixture checks that the half-written segments are gone


def test_large_stream_falls_back_when_shm_is_full(monkeypatch, fresh_warning):
    monkeypatch.setattr(_shm, "_open_new", _enospc)
    obj = [bytes(2 * T)]
    with pytest.warns(RuntimeWarning):
        payload = ser.dumps(obj)
    assert payload == pickle.dumps(obj, 5)


def test_unreachable_tracker_falls_back(monkeypatch, fresh_warning):
    def refuse(name):
        raise OSError(errno.ETIMEDOUT, "polyproc's shared-memory tracker did not start")

    monkeypatch.setattr(_shm_tracker, "register", refuse)
    with pytest.warns(RuntimeWarning, match="tracker did not start"):
        payload = ser.dumps(pattern(T))
    assert not is_zero_copy(payload)


def test_no_room_anywhere_names_the_size(monkeypatch, fresh_warning):
    monkeypatch.setattr(_shm, "_open_new", _enospc)

    def no_memory_in_band(obj, buffer_callback):
        if buffer_callback is None:
            raise MemoryError
        return pickle.dumps(obj, 5, buffer_callback=buffer_callback)

    monkeypatch.setattr(ser, "_PICKLERS", (no_memory_in_band,) + ser._PICKLERS[1:])
    with (pytest.warns(RuntimeWarning),
          pytest.raises(SerializationError, match=r"needs \d+ bytes") as info):
        ser.dumps(pattern(2 * T))
    assert isinstance(info.value, ValueError)
    import re
    assert int(re.search(r"needs (\d+) bytes", str(info.value)).group(1)) >= 2 * T


# -- Other picklers ------------------------------------------------------------------

def test_unpicklable_object_names_it():
    import threading
    with pytest.raises(SerializationError, match="lock"):
        ser.dumps({"big": pattern(2 * T), "lock": threading.Lock()})


def test_closure_over_a_large_array_goes_zero_copy():
    arr = pattern(2 * T, seed=12)
    fn = lambda i: int(arr[i])  # noqa: E731  (cloudpickle, by value)
    payload = ser.dumps(fn)
    assert is_zero_copy(payload)
    assert ser.loads(payload)(5) == int(arr[5])


def test_socket_pickles_with_the_stdlib_reducer():
    a, b = socket.socketpair()
    with a, b:
        payload = ser.dumps(a)
        c = ser.loads(payload)
        with c:
            c.sendall(b"ping")
            assert b.recv(4) == b"ping"


def test_polyproc_connection_pickles_as_a_connection():
    r, w = polyproc.Pipe(duplex=False)
    with r, w:
        w2 = ser.loads(ser.dumps(w))
        assert type(w2) is type(w)
        w2.send(pattern(T, 13))
        assert np.array_equal(r.recv(), pattern(T, 13))
        w2.close()


def test_ctrl_c_during_the_copy_leaves_nothing(monkeypatch):
    real_acquire = _shm_pool.acquire
    calls = []

    def interrupted_on_second(data):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_acquire(data)

    monkeypatch.setattr(_shm_pool, "acquire", interrupted_on_second)
    with pytest.raises(KeyboardInterrupt):
        ser.dumps([pattern(T, 1), pattern(T, 2)])
    assert len(calls) == 2
    # no_leaks: the first segment went back to the pool (FREE) and is trimmed


@pytest.mark.timeout(60)
def test_threads_sending_and_receiving_at_once_never_mix_data():
    from concurrent.futures import ThreadPoolExecutor

    def round_trips(seed):
        ok = True
        for i in range(8):
            arr = pattern(T + 4096 * (seed % 3), seed * 100 + i)
            back = ser.loads(ser.dumps(arr))
            ok &= bool(np.array_equal(back, arr))
        return ok

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(round_trips, range(8))) == [True] * 8


# -- Functions (dumps_function) --------------------------------------------------------

@pytest.fixture
def scratch_module():
    """A module made at run time, so that its functions can be dropped."""
    import sys
    import types
    module = types.ModuleType("_polyproc_scratch_functions")
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def _define(module, name: str, value: int):
    exec(f"def {name}():\n    return {value}\n", module.__dict__)
    return module.__dict__[name]


def test_a_function_pickled_by_reference_is_cached_without_keeping_it_alive(
        scratch_module):
    import weakref
    fn = _define(scratch_module, "f", 1)
    first = ser.dumps_function(fn)
    assert ser.dumps_function(fn) is first         # cached
    assert ser.loads(first) is fn                  # by reference
    ref = weakref.ref(fn)
    del fn, scratch_module.f
    gc.collect()
    assert ref() is None                           # the cache held it weakly


def test_cached_bytes_follow_a_rebound_name(scratch_module):
    """A function defined twice: the first one, still in use, must not be
    sent as the name that now means the second (pickle then saves it by
    value), so that the worker runs what the caller passed."""
    old = _define(scratch_module, "f", 1)
    assert ser.loads(ser.dumps_function(old))() == 1
    _define(scratch_module, "f", 2)
    assert ser.loads(ser.dumps_function(old))() == 1
    assert ser.loads(ser.dumps_function(scratch_module.f))() == 2


def test_callables_pickled_by_value_are_never_cached():
    import functools

    class State:
        def __init__(self):
            self.x = 1

        def get(self):
            return self.x

    state, box = State(), [1]
    callables = [state.get, functools.partial(list.__getitem__, box, 0)]
    before = [ser.loads(ser.dumps_function(c))() for c in callables]
    state.x, box[0] = 2, 2
    after = [ser.loads(ser.dumps_function(c))() for c in callables]
    assert before == [1, 1] and after == [2, 2]
    assert not ser.is_by_reference(state.get)
    assert not ser.is_by_reference(lambda: 1)
    assert ser.is_by_reference(ser.dumps) and ser.is_by_reference(State) is False
    assert ser.is_by_reference(SerializationError)


def test_function_bytes_load_any_number_of_times():
    """Never a one-shot zero-copy payload: every chunk carries the bytes."""
    arr = pattern(2 * T, seed=13)
    blob = ser.dumps_function(lambda i: int(arr[i]))
    assert not is_zero_copy(blob)
    assert [ser.loads(blob)(7) for _ in range(3)] == [int(arr[7])] * 3
