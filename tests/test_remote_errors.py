"""polyproc._transport.remote_errors: exceptions that cross a process boundary."""
from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import threading
import types

import pytest

from polyproc import RemoteError, RemoteTraceback
from polyproc._transport.remote_errors import (ExceptionMessage, exception_payload,
                                     rebuild_exception, transportable)


class TwoArgError(Exception):
    """Pickles, but does not unpickle: __init__ needs two arguments."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


class MissingFileError(OSError):
    """An OSError whose __init__ differs from OSError's: its fields must survive."""

    def __init__(self, path):
        super().__init__(2, "gone", path)


class CustomError(Exception):
    def __init__(self, message, code=0):
        super().__init__(message, code)
        self.code = code


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_transportable_keeps_a_picklable_exception_and_attaches_the_traceback():
    exc = _raised(ValueError("bad value 42"))
    out = transportable(exc)
    assert out is exc
    assert isinstance(out.__cause__, RemoteTraceback)
    assert "bad value 42" in str(out.__cause__)
    assert "_raised" in str(out.__cause__)  # the sender's frame


def test_transportable_replaces_an_exception_that_does_not_unpickle():
    out = transportable(_raised(TwoArgError("x", "y")))
    assert isinstance(out, RemoteError)
    assert out.type_name.endswith("TwoArgError")
    assert out.message == "x/y"
    assert "TwoArgError" in out.remote_traceback
    assert isinstance(out.__cause__, RemoteTraceback)
    # and the replacement itself survives the trip
    back = pickle.loads(pickle.dumps(out))
    assert (back.type_name, back.message) == (out.type_name, out.message)


def test_transportable_replaces_an_exception_with_unpicklable_attributes():
    exc = _raised(KeyError("k"))
    exc.lock = threading.Lock()
    out = transportable(exc)
    assert isinstance(out, RemoteError)
    assert out.type_name == "KeyError"


def test_payload_round_trip_rebuilds_the_original_with_cause():
    exc = _raised(CustomError("boom", code=7))
    back = rebuild_exception(exception_payload(exc))
    assert type(back) is CustomError
    assert back.code == 7 and back.args == ("boom", 7)
    assert isinstance(back.__cause__, RemoteTraceback)
    assert "CustomError: ('boom', 7)" in back.__cause__.tb


def test_payload_rebuilds_an_exception_whose_init_takes_other_arguments():
    exc = _raised(TwoArgError(1, 2))
    exc.detail = {"a": 1}
    exc.__notes__ = ["a note"]  # what add_note() does (3.11+); 3.10 has no add_note
    back = rebuild_exception(exception_payload(exc))
    assert type(back) is TwoArgError
    assert back.args == ("1/2",) and back.detail == {"a": 1}
    assert back.__notes__ == ["a note"]
    assert isinstance(back.__cause__, RemoteTraceback)


def test_payload_rebuilds_oserror_fields_without_init():
    back = rebuild_exception(exception_payload(_raised(MissingFileError("/x"))))
    assert type(back) is MissingFileError
    assert (back.errno, back.strerror, back.filename) == (2, "gone", "/x")


def test_payload_of_unrebuildable_exception_gives_remote_error():
    exc = _raised(TwoArgError(1, 2))
    exc.lock = threading.Lock()  # an attribute that can't be pickled at all
    back = rebuild_exception(exception_payload(exc))
    assert isinstance(back, RemoteError)
    assert back.message == "1/2"
    assert "Traceback" in back.remote_traceback


def test_class_missing_in_receiver_gives_remote_error():
    module = types.ModuleType("_polyproc_gone_module")
    exec("class GoneError(Exception):\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        payload = exception_payload(_raised(module.GoneError("only here")))
    finally:
        del sys.modules[module.__name__]
    back = rebuild_exception(payload)
    assert isinstance(back, RemoteError)
    assert back.type_name == "_polyproc_gone_module.GoneError"
    assert back.message == "only here"
    assert "only here" in back.remote_traceback


def test_large_exception_is_capped_and_keeps_the_end_of_the_traceback():
    exc = _raised(ValueError("x" * 200_000))
    payload = exception_payload(exc, limit=60_000)
    assert len(payload) <= 60_000
    back = rebuild_exception(payload)
    assert isinstance(back, RemoteError)
    assert back.type_name == "ValueError"
    assert back.message.startswith("xxx") and len(back.message) <= 2_000
    assert "cut to fit" in back.remote_traceback


def test_traceback_is_cut_from_the_front_when_over_the_limit():
    def recurse(n):
        if n == 0:
            raise RuntimeError("deep")
        recurse(n - 1)
    with pytest.raises(RuntimeError) as info:
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 3000))
        recurse(900)
    full = exception_payload(info.value)
    assert type(rebuild_exception(full)) is RuntimeError  # fits: exact
    limit = len(full) // 2
    payload = exception_payload(info.value, limit=limit)
    assert len(payload) <= limit
    back = rebuild_exception(payload)
    assert isinstance(back, RemoteError)  # cut: the original could not fit
    assert back.remote_traceback.rstrip().endswith("RuntimeError: deep")


def test_str_that_raises_does_not_break_the_transport():
    class BadStr(Exception):
        def __str__(self):
            raise RuntimeError("no str")
    back = rebuild_exception(exception_payload(_raised(BadStr())))
    assert isinstance(back, RemoteError)  # local class: not picklable by name
    assert back.message.startswith("<str() of") and "BadStr failed" in back.message


@pytest.mark.parametrize("payload", [b"", b"garbage", pickle.dumps((1, 2))])
def test_damaged_payload_gives_remote_error(payload):
    back = rebuild_exception(payload)
    assert isinstance(back, RemoteError)
    assert "could not be read" in back.message


def test_message_fields_are_plain_strings_and_bytes():
    payload = exception_payload(_raised(OSError(2, "missing")))
    fields = ExceptionMessage(*pickle.loads(payload))
    assert fields.type_name == "FileNotFoundError"  # OSError(2, ...) picks it
    assert isinstance(fields.pickled, bytes)
    assert type(rebuild_exception(payload)) is FileNotFoundError


def test_exceptions_travel_as_their_class_defines_after_import_distributed():
    # `import distributed` installs tblib's reducers for every exception
    # class in the process (and a forked worker inherits them): SystemExit
    # lost its code, and an exception that cannot be rebuilt looked as if
    # it could.  Checked in a fresh interpreter, as a user's program.
    program = textwrap.dedent("""
        import pickle, sys
        import distributed  # installs tblib.pickling_support
        import polyproc
        from polyproc._transport.remote_errors import pickle_exception, transportable

        class TwoArgError(Exception):
            def __init__(self, a, b):
                super().__init__(f"{a}/{b}")

        def exit_5(_):
            raise SystemExit(5)

        assert pickle.loads(pickle_exception(SystemExit(5))).code == 5
        assert isinstance(transportable(TwoArgError("x", "y")), polyproc.RemoteError)
        if __name__ == "__main__":
            with polyproc.get_context("fork").Pool(1) as pool:
                try:
                    pool.map(exit_5, [0])
                except SystemExit as exc:
                    print("code", exc.code)
        """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "code 5\n", result.stderr
