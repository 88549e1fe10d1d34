"""``python -m polyproc plot run.json -o run.png``: a timeline file as a picture.

Reads the Chrome Trace Event JSON that ``Pool(timeline="run.json")`` (or
``pool.timeline(path)``) writes (``_observe/timeline.py`` says what is in
it) and draws it with matplotlib, which is an optional extra (``pip install
polyproc[plot]``), on the Agg backend (no display needed):

* one row per worker process (per thread for a ThreadPool), in the order
  the workers started: its start-up in grey, each chunk a bar coloured by
  its function (hatched where a task failed; red and hatched, the chunk a
  worker was running when it died);
* worker exits marked on their row: a red cross with the signal or exit
  code for a worker lost or killed for a timeout, a grey tick for one that
  retired or shut down; retries and timeouts as triangles;
* below, the tasks queued and in flight over time.

The file is only read: any trace with ``X``, ``i``, ``C`` and ``M`` events
in polyproc's shape is drawn, however many events were dropped from its ring.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = ["add_arguments", "main", "Trace", "load_trace", "draw", "figure_of"]

ROW_INCHES = 0.45      # height of a worker's row, while they fit
MAX_INCHES = 30.0      # height of the picture at most
LABEL_INCHES = 0.15    # rows closer than this: names thinned out, deaths unlabelled

# Worker exits drawn as a death (red cross), by WorkerExited.reason.
DEATHS = ("lost", "timed out", "cancelled")
INSTALL_HINT = "pip install polyproc[plot]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``plot`` sub-command's arguments."""
    parser.add_argument("trace", help="a timeline file written by Pool(timeline=...) "
                        "or pool.timeline(path)")
    parser.add_argument("-o", "--output", help="the PNG to write (default: the trace's "
                        "name with .png)")
    parser.add_argument("--width", type=float, default=12.0,
                        help="width of the picture in inches at 100 dpi (default 12)")
    parser.add_argument("--title", help="the picture's title (default: the file's name)")


def main(args: argparse.Namespace) -> int:
    """Draw ``args.trace`` into ``args.output``; 0, or 1 with a message on stderr."""
    output = args.output or os.path.splitext(args.trace)[0] + ".png"
    try:
        trace = load_trace(args.trace)
    except (OSError, ValueError) as error:
        print(f"polyproc plot: cannot read the timeline {args.trace}: {error}",
              file=sys.stderr)
        return 1
    try:
        draw(trace, output, width=args.width,
             title=args.title or os.path.basename(args.trace))
    except ImportError as error:
        print(f"polyproc plot: matplotlib is needed to draw a timeline ({error}); "
              f"install it with: {INSTALL_HINT}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"polyproc plot: cannot write {output}: {error}", file=sys.stderr)
        return 1
    print(f"wrote {output}")
    return 0


@dataclass
class Trace:
    """What the picture needs from a trace, times in seconds from its start."""
    pool_pid: int | None
    names: dict[int, str] = field(default_factory=dict)        # track -> name
    order: dict[int, float] = field(default_factory=dict)      # track -> sort index
    chunks: list[dict[str, Any]] = field(default_factory=list)     # X cat chunk
    start_ups: list[dict[str, Any]] = field(default_factory=list)  # X cat start-up
    instants: list[dict[str, Any]] = field(default_factory=list)   # i events
    counters: list[tuple[float, float, float]] = field(default_factory=list)
    dropped: int = 0

    def worker_tracks(self) -> list[int]:
        """The rows: every track with a chunk, a start-up or an instant, but the pool's."""
        used = {e["pid"] for e in self.chunks + self.start_ups + self.instants}
        used.discard(self.pool_pid)
        return sorted(used, key=lambda t: (self.order.get(t, float("inf")), t))


def load_trace(path: str) -> Trace:
    """Read a timeline file; ``ValueError`` if it is not a trace of polyproc's shape."""
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise ValueError("not a Chrome Trace Event file (no \"traceEvents\" list)")
    other = data.get("otherData") or {}
    trace = Trace(other.get("pool_pid"), dropped=int(other.get("events_dropped", 0)))
    for event in data["traceEvents"]:
        _take(trace, event)
    return trace


def _take(trace: Trace, event: dict[str, Any]) -> None:
    phase, name = event.get("ph"), event.get("name")
    if phase == "M":
        args = event.get("args", {})
        if name == "process_name":
            trace.names[event["pid"]] = args.get("name", str(event["pid"]))
        elif name == "process_sort_index":
            trace.order[event["pid"]] = args.get("sort_index", 0)
        return
    seconds = event.get("ts", 0.0) / 1e6
    if phase == "X" and event.get("cat") in ("chunk", "start-up"):
        item = {"pid": event["pid"], "start": seconds, "seconds": event.get("dur", 0.0) / 1e6,
                "name": name, "args": event.get("args", {})}
        (trace.chunks if event["cat"] == "chunk" else trace.start_ups).append(item)
    elif phase == "i":
        trace.instants.append({"pid": event["pid"], "time": seconds, "name": name,
                               "cat": event.get("cat"), "args": event.get("args", {})})
    elif phase == "C":
        args = event.get("args", {})
        trace.counters.append((seconds, args.get("queued", 0), args.get("in flight", 0)))


def draw(trace: Trace, output: str, width: float = 12.0, title: str = "") -> None:
    """Draw *trace* into the PNG *output* (matplotlib, Agg backend).

    Raises ``ImportError`` without matplotlib, ``OSError`` if *output*
    cannot be written.
    """
    figure_of(trace, width, title).savefig(output, format="png")


def figure_of(trace: Trace, width: float = 12.0, title: str = "") -> Any:
    """The picture of *trace*: a matplotlib ``Figure`` (Agg backend, no display).

    Raises ``ImportError`` without matplotlib.
    """
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = trace.worker_tracks()
    # Rows of 0.45 inch, up to a picture 30 inches high: the counters keep
    # their 1.4 inches however many rows there are.
    rows_height = min(max(2.0, ROW_INCHES * len(rows)), MAX_INCHES - 2.0 - 1.6)
    figure = Figure(figsize=(width, 2.0 + rows_height + 1.6), dpi=100,
                    layout="constrained")
    timeline_axes, counter_axes = figure.subplots(
        2, 1, sharex=True, height_ratios=[rows_height, 1.4])
    _draw_rows(timeline_axes, trace, rows)
    _draw_counters(counter_axes, trace)
    lost = sum(1 for i in trace.instants if i["cat"] == "worker"
               and i["args"].get("reason") in DEATHS)
    finished = sum(1 for c in trace.chunks if not c["args"].get("lost"))
    # A ThreadPool's rows are its threads (named "thread ..." by the timeline).
    threads = bool(rows) and all(trace.names.get(t, "").startswith("thread ") for t in rows)
    summary = (f"{_count(len(rows), 'thread' if threads else 'worker process')}, "
               f"{_count(finished, 'chunk')}, {_count(lost, 'worker')} lost or killed")
    if trace.dropped:
        summary += f"; the {trace.dropped} oldest events were dropped (timeline_events=)"
    figure.suptitle(f"{title}: {summary}" if title else summary)
    return figure


def _draw_rows(axes: Any, trace: Trace, rows: list[int]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    y_of = {track: y for y, track in enumerate(rows)}
    palette = [f"C{i}" for i in range(10)]
    colours: dict[str, str] = {}
    for item in trace.start_ups:
        if item["pid"] in y_of:
            axes.broken_barh([(item["start"], item["seconds"])], (y_of[item["pid"]] - 0.35, 0.7),
                             facecolors="0.8", edgecolors="0.6")
    for item in trace.chunks:
        if item["pid"] not in y_of:
            continue
        colour = colours.setdefault(item["name"], palette[len(colours) % len(palette)])
        failed = item["args"].get("failed", 0)
        lost = item["args"].get("lost", False)
        axes.broken_barh([(item["start"], item["seconds"])], (y_of[item["pid"]] - 0.35, 0.7),
                         facecolors="none" if lost else colour,
                         edgecolors="red" if lost else ("black" if failed else colour),
                         linewidth=1.2 if lost else 0.4,
                         hatch="////" if failed or lost else None)
    # Too many rows for a name each: every step-th row is named, and deaths
    # get no text of their own (their red crosses remain).
    row_inches = min(ROW_INCHES, (MAX_INCHES - 3.6) / max(1, len(rows)))
    step = max(1, math.ceil(LABEL_INCHES / row_inches))
    _draw_instants(axes, trace, y_of, label_deaths=step == 1)
    axes.set_yticks(range(len(rows)), [trace.names.get(t, str(t)) if y % step == 0 else ""
                                       for y, t in enumerate(rows)])
    if step > 1:
        axes.tick_params(axis="y", length=0)
    axes.set_ylim(len(rows) - 0.4, -0.6)
    axes.grid(axis="x", alpha=0.3)
    handles: list[Any] = [Patch(facecolor=c, label=name)
                          for name, c in list(colours.items())[:8]]
    handles.append(Patch(facecolor="0.8", edgecolor="0.6", label="start-up"))
    handles.append(Patch(facecolor="none", edgecolor="red", hatch="////",
                         label="ran until its worker died"))
    handles.append(Line2D([], [], marker="X", color="red", markeredgecolor="black",
                          linestyle="none", markersize=10, label="worker lost/killed"))
    handles.append(Line2D([], [], marker="|", color="0.4", linestyle="none",
                          markersize=10, label="worker exited"))
    handles.append(Line2D([], [], marker="v", color="orange", linestyle="none",
                          label="task retried"))
    handles.append(Line2D([], [], marker="v", color="purple", linestyle="none",
                          label="task timed out"))
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                fontsize="small")


def _draw_instants(axes: Any, trace: Trace, y_of: dict[int, int],
                   label_deaths: bool = True) -> None:
    times = [c["start"] + c["seconds"] for c in trace.chunks + trace.start_ups] + \
        [i["time"] for i in trace.instants]
    first, last = (min(times), max(times)) if times else (0.0, 0.0)
    for instant in trace.instants:
        y = y_of.get(instant["pid"])
        if y is None:
            continue
        args, cat = instant["args"], instant["cat"]
        if cat == "worker" and args.get("reason") in DEATHS:
            axes.plot(instant["time"], y, marker="X", markersize=14, color="red",
                      markeredgecolor="black", zorder=5)
            if not label_deaths:
                continue
            # Deaths late in the run are labelled on their left: on the
            # right the label would run out of the axes, over the legend.
            late = instant["time"] > first + 0.6 * (last - first)
            axes.annotate(f"{args.get('reason')}: {_cause(args)}", (instant["time"], y),
                          xytext=(-10 if late else 8, -10), textcoords="offset points",
                          horizontalalignment="right" if late else "left",
                          color="darkred", fontsize="small", fontweight="bold", zorder=6,
                          # Readable over the bars it may cross.
                          bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                                "edgecolor": "none", "alpha": 0.8})
        elif cat == "worker":
            axes.plot(instant["time"], y, marker="|", markersize=14, color="0.4", zorder=4)
        elif cat in ("retry", "timeout"):
            axes.plot(instant["time"], y - 0.45, marker="v", markersize=9,
                      color="orange" if cat == "retry" else "purple", zorder=5)


def _count(number: int, thing: str) -> str:
    """``"1 chunk"``, ``"2 chunks"``, ``"2 worker processes"``."""
    if number == 1:
        return f"1 {thing}"
    return f"{number} {thing}{'es' if thing.endswith('ss') else 's'}"


def _cause(args: dict[str, Any]) -> str:
    """What ended a worker, from its exit instant's args: its signal or exit code."""
    if args.get("signal"):
        return str(args["signal"])
    code = args.get("exitcode")
    # None: nobody could read it (a fork template's worker orphaned by the
    # template's death).
    return "exit code unknown" if code is None else f"exit code {code}"


def _draw_counters(axes: Any, trace: Trace) -> None:
    if trace.counters:
        times = [c[0] for c in trace.counters]
        axes.step(times, [c[1] for c in trace.counters], where="post", label="queued",
                  color="0.5")
        axes.step(times, [c[2] for c in trace.counters], where="post", label="in flight",
                  color="C0")
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    axes.set_ylabel("tasks")
    axes.set_xlabel("seconds since the pool started")
    axes.grid(alpha=0.3)
