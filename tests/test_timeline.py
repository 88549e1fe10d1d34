"""``Pool(timeline=...)`` (polyproc/_observe/timeline.py) and ``python -m polyproc
plot`` (polyproc/_cli/plot.py): Chrome Trace Event files from real pools with
workers killed by real signals, and the PNG drawn from one."""
from __future__ import annotations

import functools
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import polyproc
from polyproc import TaskTimeoutError, WorkerLostError
from polyproc.pool import ThreadPool

import _pool_helpers as h

FORK = polyproc.get_context("fork")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load(path) -> dict:
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def _events(trace: dict, ph: str, cat: str | None = None) -> list[dict]:
    return [e for e in trace["traceEvents"]
            if e["ph"] == ph and (cat is None or e.get("cat") == cat)]


def _track_names(trace: dict) -> dict[int, str]:
    return {e["pid"]: e["args"]["name"] for e in _events(trace, "M")
            if e["name"] == "process_name"}


def _run_with_a_death(pool, tmp_path) -> None:
    """A map, then a task that SIGKILLs its worker once and is retried."""
    assert pool.map(h.square, range(24), chunksize=3) == [x * x for x in range(24)]
    assert pool.apply(h.die_first_time, (str(tmp_path / "died"),), retries=1) == "ok"


def test_timeline_written_at_join_has_tracks_chunks_deaths_and_counters(ctx, tmp_path):
    path = tmp_path / "run.json"
    pool = ctx.Pool(2, timeline=str(path))
    _run_with_a_death(pool, tmp_path)
    assert not path.exists()
    pool.close()
    pool.join()
    trace = _load(path)
    assert trace["displayTimeUnit"] == "ms"
    assert trace["otherData"]["events_dropped"] == 0
    names = _track_names(trace)
    chunks = _events(trace, "X", "chunk")
    assert sum(e["args"]["tasks"] for e in chunks if e["name"] == "square") == 24
    for chunk in chunks:
        if chunk["args"].get("lost"):
            continue
        assert chunk["pid"] in names and names[chunk["pid"]].startswith("worker ")
        assert chunk["dur"] >= 0 and chunk["args"]["queued"] >= 0
    # Phases nest inside their chunk, on its track.
    runs = _events(trace, "X", "phase")
    for chunk in chunks:
        if chunk["args"].get("lost"):
            continue
        inside = [p for p in runs if p["pid"] == chunk["pid"] and p["name"] == "run"
                  and chunk["ts"] - 1 <= p["ts"]
                  and p["ts"] + p["dur"] <= chunk["ts"] + chunk["dur"] + 1]
        assert inside, chunk
    (death,) = [e for e in _events(trace, "i", "worker") if e["args"]["reason"] == "lost"]
    assert death["args"]["signal"] == "SIGKILL" and death["args"]["exitcode"] == -9
    assert death["name"] == "worker lost (SIGKILL)" and death["pid"] in names
    (retry,) = _events(trace, "i", "retry")
    assert retry["pid"] == death["pid"] and retry["args"]["retries_left"] == 0
    # The chunk it was running ends at its death.
    (lost,) = [e for e in chunks if e["args"].get("lost")]
    assert lost["pid"] == death["pid"] and lost["name"] == "die_first_time"
    assert abs(lost["ts"] + lost["dur"] - death["ts"]) < 1
    shut_down = [e for e in _events(trace, "i", "worker") if e["args"]["reason"] == "shut down"]
    assert len(shut_down) == 2
    counters = _events(trace, "C")
    assert counters and counters[-1]["args"] == {"queued": 0, "in flight": 0}
    assert max(c["args"]["in flight"] for c in counters) > 0


def test_timeline_written_at_terminate():
    # The with-block terminates the pool; the file is there after it.
    import tempfile
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "run.json")
        with FORK.Pool(1, timeline=path) as pool:
            pool.map(h.square, range(4))
        trace = _load(path)
    assert {e["args"]["reason"] for e in _events(trace, "i", "worker")} == {"terminated"}
    assert len(_events(trace, "X", "chunk")) >= 1


def test_timeline_at_any_time(tmp_path):
    with FORK.Pool(2, timeline=True) as pool:
        pool.map(h.square, range(8), chunksize=2)
        pool.timeline(tmp_path / "now.json")
        assert len(_events(_load(tmp_path / "now.json"), "X", "chunk")) == 4
        pool.map(h.square, range(8), chunksize=2)
        pool.timeline(tmp_path / "later.json")
        assert len(_events(_load(tmp_path / "later.json"), "X", "chunk")) == 8
    with FORK.Pool(1) as pool, pytest.raises(ValueError, match="timeline=True"):
        pool.timeline(tmp_path / "none.json")


def test_timeout_is_an_instant_on_the_workers_track(tmp_path):
    with FORK.Pool(1, timeline=True) as pool:
        with pytest.raises(TaskTimeoutError):
            pool.apply(h.sleep_for, (30,), timeout=0.2)
        pool.timeline(tmp_path / "run.json")
    trace = _load(tmp_path / "run.json")
    (timeout,) = _events(trace, "i", "timeout")
    assert timeout["args"]["timeout"] == 0.2 and timeout["args"]["ran"] >= 0.2
    exits = [e for e in _events(trace, "i", "worker") if e["pid"] == timeout["pid"]]
    assert [e["args"]["reason"] for e in exits] == ["timed out"]


def test_ring_keeps_the_last_events_and_says_how_many_were_dropped(tmp_path):
    with FORK.Pool(1, timeline=True, timeline_events=50) as pool:
        pool.map(h.square, range(200), chunksize=1)
        pool.timeline(tmp_path / "run.json")
    trace = _load(tmp_path / "run.json")
    kept = [e for e in trace["traceEvents"] if e["ph"] != "M"]
    other = trace["otherData"]
    assert len(kept) == other["max_events"] == 50
    assert other["events_dropped"] == other["events_recorded"] - 50 > 600
    # The last ones: the final counter says nothing is left.
    assert _events(trace, "C")[-1]["args"] == {"queued": 0, "in flight": 0}
    with pytest.raises(ValueError, match="timeline_events"):
        FORK.Pool(1, timeline=True, timeline_events=0)
    with pytest.raises(TypeError, match="timeline must be"):
        FORK.Pool(1, timeline=3)


def test_a_timeline_file_that_cannot_be_written_warns_at_join(tmp_path):
    path = tmp_path / "no such folder" / "run.json"
    pool = FORK.Pool(1, timeline=path)
    pool.map(h.square, range(4))
    pool.close()
    with pytest.warns(RuntimeWarning, match="could not write the pool's timeline"):
        pool.join()
    assert not path.parent.exists()


def test_thread_pool_tracks_are_its_threads(tmp_path):
    with ThreadPool(2, timeline=True) as pool:
        pool.map(h.sleep_for, [0.02] * 6, chunksize=1)
        pool.timeline(tmp_path / "run.json")
    trace = _load(tmp_path / "run.json")
    chunks = _events(trace, "X", "chunk")
    assert len(chunks) == 6
    tracks = {e["pid"] for e in chunks}
    assert len(tracks) == 2 and os.getpid() not in tracks
    names = _track_names(trace)
    assert all(names[t].startswith("thread ") for t in tracks)


def test_executor_timeline_written_at_shutdown(tmp_path):
    path = tmp_path / "run.json"
    executor = polyproc.Executor(2, mp_context=FORK, timeline=path)
    with pytest.raises(WorkerLostError):
        executor.submit(h.kill_self, 0).result(10)
    assert executor.submit(h.square, 3).result(10) == 9
    executor.shutdown()
    trace = _load(path)
    assert [e["args"]["signal"] for e in _events(trace, "i", "worker")
            if e["args"]["reason"] == "lost"] == ["SIGKILL"]
    assert _events(trace, "i", "failure")


def test_timeline_written_at_interpreter_exit_of_an_open_pool(tmp_path):
    path = tmp_path / "run.json"
    script = textwrap.dedent(f"""
        import polyproc

        def square(x):
            return x * x

        if __name__ == "__main__":
            pool = polyproc.Pool(2, timeline={str(path)!r})
            assert pool.map(square, range(10), chunksize=2) == [x * x for x in range(10)]
            # neither closed nor joined: written at exit
    """)
    (tmp_path / "prog.py").write_text(script)
    done = subprocess.run([sys.executable, str(tmp_path / "prog.py")], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    trace = _load(path)
    assert len(_events(trace, "X", "chunk")) == 5
    assert {e["args"]["reason"] for e in _events(trace, "i", "worker")} == {"terminated"}


# -- python -m polyproc plot ---------------------------------------------------

def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    return env


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as file:
        head = file.read(24)
    assert head[:8] == PNG_MAGIC
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_plot_writes_a_png_of_a_run_with_a_death(tmp_path):
    trace = tmp_path / "run.json"
    pool = FORK.Pool(2, timeline=trace)
    _run_with_a_death(pool, tmp_path)
    pool.close()
    pool.join()
    image = tmp_path / "run.png"
    done = subprocess.run([sys.executable, "-m", "polyproc", "plot", str(trace),
                           "-o", str(image)], env=_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"wrote {image}" in done.stdout
    width, height = _png_size(image)
    assert 1000 <= width <= 2000 and 300 <= height <= 1500
    assert image.stat().st_size > 10_000  # bars and text, not a blank canvas
    import matplotlib.image
    pixels = matplotlib.image.imread(str(image))
    assert pixels.shape[:2] == (height, width)
    # Red of a death's marker is somewhere in it.
    red = (pixels[..., 0] > 0.9) & (pixels[..., 1] < 0.2) & (pixels[..., 2] < 0.2)
    assert red.any()


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path):
    trace = tmp_path / "run.json"
    with FORK.Pool(1, timeline=trace) as pool:
        pool.map(h.square, range(4))
    # A Python where matplotlib cannot be imported (None in sys.modules
    # makes every import of it raise ImportError).
    code = ("import sys; sys.modules['matplotlib'] = None; "
            "from polyproc.__main__ import main; "
            f"sys.exit(main(['plot', {str(trace)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install polyproc[plot]" in done.stderr
    assert not (tmp_path / "run.png").exists()


def test_plot_of_a_file_that_is_no_timeline_fails_clearly(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    missing = tmp_path / "missing.json"
    for path, words in ((bad, "traceEvents"), (missing, "No such file")):
        done = subprocess.run([sys.executable, "-m", "polyproc", "plot", str(path)],
                              env=_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert "cannot read the timeline" in done.stderr and words in done.stderr


def test_concurrent_timeline_writes_to_one_path_each_leave_a_whole_file(tmp_path):
    # Threads writing the same file at once (a user's thread while the pool
    # writes its own at terminate, or two of the user's): each write is
    # atomic, so every read between them parses.
    path = tmp_path / "run.json"
    errors: list[BaseException] = []

    def write_and_read() -> None:
        for _ in range(15):
            try:
                pool.timeline(path)
                _load(path)
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

    with FORK.Pool(1, timeline=True) as pool:
        pool.map(h.square, range(2000), chunksize=1)  # a file of some size
        threads = [threading.Thread(target=write_and_read) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_timeline_in_a_missing_folder_names_the_path_asked_for(tmp_path):
    path = tmp_path / "no such folder" / "run.json"
    with FORK.Pool(1, timeline=True) as pool:
        with pytest.raises(FileNotFoundError) as raised:
            pool.timeline(path)
    assert raised.value.filename == str(path)
    assert str(path) in str(raised.value) and ".tmp" not in str(raised.value)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_call_cancelled_by_ctrl_c_leaves_nothing_counted_queued(kind, tmp_path):
    # Its queued chunks never run: chunk_cancelled takes them off the
    # counter (without it, "queued" stayed up for the rest of the run).
    hold = tmp_path / "hold"
    hold.touch()
    fn = functools.partial(h.square_unless_held, hold_dir=str(tmp_path))
    make = FORK.Pool if kind == "process" else ThreadPool
    with make(1, timeline=True) as pool:
        ctrl_c = h.CtrlC("_pool/results.py", (tmp_path / "started-0").exists)
        with h.ctrl_c_raises(), pytest.raises(KeyboardInterrupt):
            ctrl_c.start()
            pool.map(fn, range(6), chunksize=1)
        hold.unlink()
        assert pool.map(h.square, range(3), chunksize=1) == [0, 1, 4]  # runs on
        pool.timeline(tmp_path / "run.json")
    trace = _load(tmp_path / "run.json")
    assert _events(trace, "C")[-1]["args"] == {"queued": 0, "in flight": 0}
    cancelled = _events(trace, "i", "cancelled")
    assert sum(e["args"]["tasks"] for e in cancelled) >= 3  # tasks 2..5 at least
    assert all(e["pid"] == trace["otherData"]["pool_pid"] for e in cancelled)


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_terminate_leaves_nothing_counted_queued(kind, tmp_path):
    # Terminate fails what was queued without a chunk event: the file it
    # writes must not end with a queue that never drains.
    hold = tmp_path / "hold"
    hold.touch()
    fn = functools.partial(h.square_unless_held, hold_dir=str(tmp_path))
    path = tmp_path / "run.json"
    make = FORK.Pool if kind == "process" else ThreadPool
    pool = make(1, timeline=str(path))
    pool.map_async(fn, range(6), chunksize=1)
    h._wait_for_file(str(tmp_path / "started-0"))
    _wait_for_queued(pool, tmp_path / "now.json", 4)  # the rest is fed in a thread
    if kind == "thread":
        hold.unlink()  # a thread cannot be killed: let its task end
    pool.terminate()
    assert _events(_load(path), "C")[-1]["args"] == {"queued": 0, "in flight": 0}


def _wait_for_queued(pool, path, tasks: int, limit: float = 10.0) -> None:
    """Return once the pool's timeline counts *tasks* tasks queued."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        pool.timeline(path)
        if _events(_load(path), "C")[-1]["args"]["queued"] >= tasks:
            return
        time.sleep(0.005)
    raise AssertionError(f"{tasks} tasks were not queued within {limit} s")


def _trace_with_late_deaths(tmp_path) -> str:
    """A real pool's timeline whose last events are two deaths: a worker
    SIGKILLed at the very end, and a worker whose exit code no one could
    read (``exitcode`` None, as for a fork template's orphan)."""
    path = tmp_path / "run.json"
    with FORK.Pool(2, timeline=True) as pool:
        pool.map(h.square, range(8), chunksize=1)
        with pytest.raises(WorkerLostError):
            pool.apply(h.kill_self, (0,))
        pool.timeline(path)
    trace = _load(path)
    (death,) = [e for e in _events(trace, "i", "worker") if e["args"]["reason"] == "lost"]
    unknown = dict(death, pid=death["pid"] + 1_000_000, ts=death["ts"] - 1,
                   args=dict(death["args"], exitcode=None, signal=None))
    trace["traceEvents"].append(unknown)
    trace["traceEvents"].append({"ph": "M", "name": "process_name", "pid": unknown["pid"],
                                 "tid": unknown["pid"], "args": {"name": "orphan"}})
    path.write_text(json.dumps(trace))
    return str(path)


def test_plot_labels_deaths_inside_the_picture_and_says_when_the_exit_code_is_unknown(
        tmp_path):
    pytest.importorskip("matplotlib")
    from polyproc._cli import plot
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    figure = plot.figure_of(plot.load_trace(_trace_with_late_deaths(tmp_path)))
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = figure.axes[0]
    frame = axes.get_window_extent(renderer)
    labels = [t for t in axes.texts if t.get_text().startswith("lost")]
    assert sorted(t.get_text() for t in labels) == ["lost: SIGKILL",
                                                    "lost: exit code unknown"]
    for label in labels:
        box = label.get_window_extent(renderer)
        # Not over the legend, beside the axes on the right.
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1, label.get_text()
        assert label.get_bbox_patch() is not None  # a backing: readable over bars


def test_a_long_lived_worker_keeps_its_track_name_while_others_come_and_go(tmp_path):
    # The names of tracks are bounded like the events: the names forgotten
    # first must be those of workers gone, not that of a worker still
    # running (its track showed as a bare pid).
    hold = tmp_path / "hold"
    hold.touch()
    fn = functools.partial(h.square_unless_held, hold_dir=str(tmp_path))
    with FORK.Pool(2, timeline=True, timeline_events=10) as pool:
        held = pool.apply_async(fn, (0,))
        h._wait_for_file(str(tmp_path / "started-0"))
        for _ in range(12):  # the other worker dies, a new one comes: a new name
            with pytest.raises(WorkerLostError):
                pool.apply(h.kill_self, (0,))
        hold.unlink()
        assert held.get(timeout=10) == 0
        pool.timeline(tmp_path / "run.json")
    trace = _load(tmp_path / "run.json")
    names = _track_names(trace)
    (chunk,) = [e for e in _events(trace, "X", "chunk") if "square_unless_held" in e["name"]]
    assert names.get(chunk["pid"], "").startswith("worker "), names
    assert {e["pid"] for e in trace["traceEvents"]} <= set(names)


class _CallableWithoutRepr:
    """A callable object whose repr raises (as a half-built object's may)."""

    def __call__(self, x):
        return x + 1

    def __repr__(self):
        raise RuntimeError("no repr")


def test_chunks_of_a_partial_or_a_callable_object_have_short_names(tmp_path):
    # Named after what they call: a partial's repr held every bound
    # argument (a path here, a whole data set elsewhere), made for each
    # call; a callable object's repr may even raise.
    big = "x" * 10_000
    with FORK.Pool(1, timeline=True) as pool:
        assert pool.map(functools.partial(h.add, 1), range(3)) == [1, 2, 3]
        assert pool.map(functools.partial(h.add, big), ["y"]) == [big + "y"]
        assert pool.map(_CallableWithoutRepr(), range(3)) == [1, 2, 3]
        pool.timeline(tmp_path / "run.json")
    names = {e["name"] for e in _events(_load(tmp_path / "run.json"), "X", "chunk")}
    assert names == {"partial(add)", "_CallableWithoutRepr"}


def test_plot_of_a_thread_pool_counts_threads_not_processes(tmp_path):
    pytest.importorskip("matplotlib")
    from polyproc._cli import plot
    with ThreadPool(2, timeline=True) as pool:
        pool.map(h.square, range(6), chunksize=1)
        pool.timeline(tmp_path / "run.json")
    trace = plot.load_trace(str(tmp_path / "run.json"))
    title = plot.figure_of(trace)._suptitle.get_text()
    rows = len(trace.worker_tracks())
    assert title.startswith(f"{rows} thread{'s' if rows != 1 else ''}, 6 chunks")
    assert "process" not in title


def _many_deaths_trace(path, workers: int) -> str:
    """A timeline file in polyproc's shape: *workers* workers, each running
    a chunk until it is SIGKILLed (as under an OOM killer's rampage)."""
    pool_pid = 1
    events: list[dict] = [{"ph": "M", "name": "process_name", "pid": pool_pid,
                           "tid": pool_pid, "args": {"name": "pool (pid 1)"}}]
    for n in range(workers):
        pid = 1000 + n
        events += [
            {"ph": "M", "name": "process_name", "pid": pid, "tid": pid,
             "args": {"name": f"worker {n % 8} (pid {pid})"}},
            {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": pid,
             "args": {"sort_index": n}},
            {"ph": "X", "cat": "chunk", "name": "work", "pid": pid, "tid": pid,
             "ts": n * 1e4, "dur": 5e3, "args": {"tasks": 1, "lost": True}},
            {"ph": "i", "s": "p", "cat": "worker", "name": "worker lost (SIGKILL)",
             "pid": pid, "tid": pid, "ts": n * 1e4 + 5e3,
             "args": {"reason": "lost", "exitcode": -9, "signal": "SIGKILL"}},
            {"ph": "C", "name": "tasks", "pid": pool_pid, "tid": pool_pid, "ts": n * 1e4,
             "args": {"queued": workers - n, "in flight": 1}},
        ]
    with open(path, "w", encoding="utf-8") as file:
        json.dump({"traceEvents": events, "otherData": {"pool_pid": pool_pid}}, file)
    return str(path)


def test_plot_of_hundreds_of_workers_stays_readable(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from polyproc._cli import plot
    figure = plot.figure_of(plot.load_trace(_many_deaths_trace(tmp_path / "run.json", 300)))
    FigureCanvasAgg(figure).draw()
    rows_axes, counter_axes = figure.axes[:2]
    # The counters keep a panel of their own, not a sliver under 300 rows.
    assert counter_axes.get_position().height * figure.get_figheight() >= 1.0
    # Row names and death labels that would pile on each other are thinned
    # out: at most one name per 0.12 inch of rows, no text per death.
    named = [t for t in rows_axes.get_yticklabels() if t.get_text()]
    rows_inches = rows_axes.get_position().height * figure.get_figheight()
    assert 10 <= len(named) <= rows_inches / 0.12
    assert not [t for t in rows_axes.texts if t.get_text().startswith("lost")]
    # Every death still has its marker.
    markers = [line for line in rows_axes.get_lines() if line.get_marker() == "X"]
    assert len(markers) == 300
