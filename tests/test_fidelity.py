"""Drop-in fidelity of exceptions: ``import polyproc as multiprocessing``
must not change what a program catches, or where.

Every test catches exactly what a stdlib program would write in its
``except`` clause.  Each docstring puts the stdlib's behaviour (checked
with CPython 3.11 and 3.13: ``multiprocessing.pool.Pool`` and
``concurrent.futures.ProcessPoolExecutor``) next to polyproc's.  Exception
classes and task functions live in tests/_fidelity_helpers.py, so that
spawn and forkserver workers can import them.
"""
from __future__ import annotations

import concurrent.futures.process
import multiprocessing as std_multiprocessing
import sys
import threading

import _fidelity_helpers as h
import pytest
from conftest import START_METHODS

import polyproc as multiprocessing
import polyproc.pool  # binds multiprocessing.pool, as a stdlib program uses it

WAIT = 30  # bound on any single result wait, far above what each takes


# Function scope, not module scope: two module-scoped fixtures kept a pool
# of one kind (its PoolScheduler thread) alive while the other made its fork
# pool, which forked a multi-threaded process (Python 3.12+ warns; the
# child may deadlock).  A pool per test costs about 2 s for the module.
@pytest.fixture(params=START_METHODS)
def pool(request):
    """A Pool per test and start method; each test checks that it goes on
    after the error."""
    p = multiprocessing.get_context(request.param).Pool(2)
    yield p
    p.terminate()
    p.join()


@pytest.fixture(params=START_METHODS)
def executor(request):
    """An Executor per test and start method (function scope: see pool)."""
    ex = multiprocessing.Executor(2, mp_context=multiprocessing.get_context(request.param))
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def _still_works(pool_or_executor) -> None:
    if isinstance(pool_or_executor, concurrent.futures.Executor):
        assert pool_or_executor.submit(h.identity, 7).result(WAIT) == 7
    else:
        assert pool_or_executor.apply(h.identity, (7,)) == 7


# -- 1. exceptions keep their type ----------------------------------------------

def _check_two_arg_error(error: h.TwoArgError) -> None:
    assert type(error) is h.TwoArgError
    assert error.args == ("3: needs two arguments",)
    assert (error.code, error.detail, error.extra) == (3, "needs two arguments",
                                                       {"kept": [1, 2]})
    if sys.version_info >= (3, 11):
        assert error.__notes__ == ["a note from the worker"]
    assert "raise_two_arg" in str(error.__cause__)  # the worker's traceback


def test_pool_task_exception_with_a_custom_constructor_keeps_its_type(pool):
    """stdlib Pool: hangs for ever; its result handler thread dies unpickling
    ``TwoArgError(*args)`` (TypeError: missing argument; gh-79492).
    polyproc: ``get()`` raises the ``TwoArgError`` itself, with its
    attributes, notes and args."""
    try:
        pool.apply_async(h.raise_two_arg, (3,)).get(WAIT)
    except h.TwoArgError as error:
        _check_two_arg_error(error)
    else:
        pytest.fail("no exception")
    _still_works(pool)


def test_executor_task_exception_with_a_custom_constructor_keeps_its_type(executor):
    """stdlib ProcessPoolExecutor: ``BrokenProcessPool`` for every pending
    future, and the executor is unusable.  polyproc: the future raises the
    ``TwoArgError`` itself; the executor goes on."""
    try:
        executor.submit(h.raise_two_arg, 3).result(WAIT)
    except h.TwoArgError as error:
        _check_two_arg_error(error)
    else:
        pytest.fail("no exception")
    _still_works(executor)


def test_pool_task_exception_with_a_large_message_keeps_its_type(pool):
    """stdlib Pool: ``ValueError`` with the whole 1 MiB message.  polyproc:
    the same (the 60 KB cap is only for ``Process.exception``'s pipe)."""
    try:
        pool.apply(h.big_message, (1,))
    except ValueError as error:
        assert type(error) is ValueError and len(str(error)) == h.BIG
    else:
        pytest.fail("no exception")


def test_executor_task_exception_with_a_large_message_keeps_its_type(executor):
    """stdlib ProcessPoolExecutor: ``ValueError`` with the whole 1 MiB
    message.  polyproc: the same."""
    try:
        executor.submit(h.big_message).result(WAIT)
    except ValueError as error:
        assert type(error) is ValueError and len(str(error)) == h.BIG
    else:
        pytest.fail("no exception")


def test_pool_unpicklable_result_raises_maybe_encoding_error(pool):
    """stdlib Pool: ``multiprocessing.pool.MaybeEncodingError`` ("Error
    sending result: ..."), for that task only.  polyproc: an
    ``UnpicklableResultError``, which is that very class (and a
    ``SerializationError``), with the stdlib's ``exc`` and ``value``."""
    assert multiprocessing.pool.MaybeEncodingError is \
        std_multiprocessing.pool.MaybeEncodingError
    try:
        pool.apply(h.return_lock)
    except multiprocessing.pool.MaybeEncodingError as error:
        assert "lock" in error.value and "cannot pickle" in error.exc
        assert isinstance(error, multiprocessing.SerializationError)
    else:
        pytest.fail("no exception")
    outcomes = []
    for result in [pool.apply_async(h.identity, (1,)),
                   pool.apply_async(h.return_refuses_to_pickle),
                   pool.apply_async(h.identity, (3,))]:
        try:
            outcomes.append(result.get(WAIT))
        except multiprocessing.pool.MaybeEncodingError as error:
            outcomes.append(type(error.reason))
    assert outcomes == [1, RuntimeError, 3]
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.map(h.return_lock, range(3))


def test_executor_unpicklable_result_raises_the_pickling_error(executor):
    """stdlib ProcessPoolExecutor: the future raises what pickling the result
    raised (``TypeError: cannot pickle '_thread.lock' object``; the
    ``RuntimeError`` of a ``__reduce__``).  polyproc: the same types (the
    first a ``SerializationError`` too), for that future only."""
    try:
        executor.submit(h.return_lock).result(WAIT)
    except TypeError as error:
        assert "cannot pickle '_thread.lock' object" in str(error)
    else:
        pytest.fail("no exception")
    try:
        executor.submit(h.return_refuses_to_pickle).result(WAIT)
    except RuntimeError as error:
        assert "RefusesToPickle cannot be pickled" in str(error)
    else:
        pytest.fail("no exception")
    _still_works(executor)


def test_pool_unpicklable_argument_keeps_the_type_pickle_raised(pool):
    """stdlib Pool: ``get()`` raises what pickling the argument raised
    (``RuntimeError`` from a ``__reduce__``, ``TypeError`` for a lock), and
    ``map`` raises it (at the call, since it waits).  polyproc: the same
    types; polyproc's message (which task, which object) is a note, or, for
    pickle's own ``TypeError``, the message of a ``SerializationError``
    that is also a ``TypeError``."""
    with pytest.raises(RuntimeError, match="RefusesToPickle cannot be pickled"):
        pool.apply_async(h.identity, (h.RefusesToPickle(),)).get(WAIT)
    try:
        pool.map(h.identity, [1, 2, h.RefusesToPickle()])
    except RuntimeError as error:
        if sys.version_info >= (3, 11):
            assert any("task 2 of identity()" in note for note in error.__notes__)
    else:
        pytest.fail("no exception")
    try:
        pool.apply_async(h.identity, (threading.Lock(),)).get(WAIT)
    except TypeError as error:
        assert isinstance(error, multiprocessing.SerializationError)
        assert "task 0 of identity()" in str(error)
    else:
        pytest.fail("no exception")
    _still_works(pool)


def test_executor_unpicklable_argument_keeps_the_type_pickle_raised(executor):
    """stdlib ProcessPoolExecutor: ``result()`` raises what pickling the
    argument raised (``RuntimeError``, ``TypeError``).  polyproc: the same."""
    with pytest.raises(RuntimeError, match="RefusesToPickle cannot be pickled"):
        executor.submit(h.identity, h.RefusesToPickle()).result(WAIT)
    with pytest.raises(TypeError, match="lock"):
        executor.submit(h.identity, threading.Lock()).result(WAIT)
    results = executor.map(h.identity, [1, h.RefusesToPickle(), 3])
    assert next(results) == 1
    with pytest.raises(RuntimeError):
        next(results)
    _still_works(executor)


# -- where the error surfaces ---------------------------------------------------

def test_pool_apply_async_loop_handles_errors_per_item(pool):
    """stdlib Pool: ``apply_async`` returns; the unpicklable argument's
    ``get()`` raises (``RuntimeError``), and ``error_callback`` receives it,
    in a pool thread.  polyproc: the same, the callback in a thread that is
    not the caller's (a caller holding a lock the callback takes would
    deadlock otherwise)."""
    errors, callback_threads = [], []
    called = threading.Event()

    def error_callback(error):
        errors.append(error)
        callback_threads.append(threading.get_ident())
        called.set()

    items = [1, h.RefusesToPickle(), 3]
    results = [pool.apply_async(h.identity, (x,), error_callback=error_callback)
               for x in items]
    outcomes = []
    for result in results:
        try:
            outcomes.append(result.get(WAIT))
        except RuntimeError as error:
            outcomes.append("failed")
            assert "RefusesToPickle cannot be pickled" in str(error)
    assert outcomes == [1, "failed", 3]
    assert called.wait(WAIT)
    assert [type(e) for e in errors] == [RuntimeError]
    assert callback_threads != [threading.get_ident()]


def test_pool_map_async_and_imap_fail_at_the_item(pool):
    """stdlib Pool: ``map_async`` returns and its ``get()`` raises;
    ``imap`` returns and raises at the item's position.  polyproc: the same."""
    result = pool.map_async(h.identity, [1, h.RefusesToPickle()])
    with pytest.raises(RuntimeError):
        result.get(WAIT)
    results = pool.imap(h.identity, [1, h.RefusesToPickle(), 3])
    assert next(results) == 1
    with pytest.raises(RuntimeError):
        next(results)
    assert next(results) == 3


def test_executor_submit_loop_handles_errors_per_item(executor):
    """stdlib ProcessPoolExecutor: ``submit`` returns; the future's
    ``result()`` raises what pickle raised.  polyproc: the same."""
    futures = [executor.submit(h.identity, x) for x in [1, h.RefusesToPickle(), 3]]
    outcomes = []
    for future in futures:
        try:
            outcomes.append(future.result(WAIT))
        except RuntimeError:
            outcomes.append("failed")
    assert outcomes == [1, "failed", 3]


# -- executor failures the stdlib reports as BrokenProcessPool --------------------

def test_executor_task_that_cannot_be_unpickled_in_the_worker(executor):
    """stdlib ProcessPoolExecutor: the worker dies unpickling the call and
    every future fails with ``BrokenProcessPool``; the executor is broken.
    polyproc: only that future fails, with an exception that is a
    ``BrokenProcessPool``; the executor goes on."""
    try:
        executor.submit(h.identity, h.FailsToUnpickle("worker")).result(WAIT)
    except concurrent.futures.process.BrokenProcessPool as error:
        assert "refuses to be unpickled (worker)" in str(error)
    else:
        pytest.fail("no exception")
    _still_works(executor)


def test_executor_result_that_cannot_be_unpickled_in_the_parent(executor):
    """stdlib ProcessPoolExecutor: reading the result fails in its manager
    thread and every future fails with ``BrokenProcessPool``.  polyproc:
    only that future, with an exception that is a ``BrokenProcessPool``."""
    try:
        executor.submit(h.return_fails_to_unpickle).result(WAIT)
    except concurrent.futures.process.BrokenProcessPool as error:
        assert "refuses to be unpickled (parent)" in str(error)
    else:
        pytest.fail("no exception")
    _still_works(executor)


# -- queues ----------------------------------------------------------------------

@pytest.mark.parametrize("queue_type", ["Queue", "SimpleQueue", "JoinableQueue"])
def test_queue_put_of_an_unpicklable_object_raises_what_pickle_raised(queue_type):
    """stdlib ``Queue.put``: returns; its feeder thread prints the error and
    drops the item (gh-79423).  stdlib ``SimpleQueue.put``: raises what
    pickle raised at the call.  polyproc (every queue): raises at the call,
    catchable as what pickle raised (``RuntimeError``, ``TypeError``); the
    queue stays empty and usable."""
    q = getattr(multiprocessing, queue_type)()
    with pytest.raises(RuntimeError, match="RefusesToPickle cannot be pickled"):
        q.put(h.RefusesToPickle())
    with pytest.raises(TypeError, match="lock"):
        q.put(threading.Lock())
    q.put("next")
    assert q.get() == "next"
