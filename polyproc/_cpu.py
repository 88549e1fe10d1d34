"""How many CPUs this process may use: ``process_cpu_count()``.

Python 3.13 added ``os.process_cpu_count()`` (the CPUs in the process's
affinity mask, ``len(os.sched_getaffinity(0))``) and made the default size
of ``multiprocessing.Pool`` and ``ProcessPoolExecutor`` use it instead of
``os.cpu_count()`` (the CPUs of the machine).  polyproc does the same on
every Python it supports, and goes one step further, as loky does: a
container's CPU *quota* (cgroup bandwidth control) limits the process as
surely as its affinity does, so the count is also capped by the quota,
rounded up.  A container given 2 CPUs' worth of time on a 64-core host
then gets a pool of 2 workers instead of 64 that take turns.

What reads what (the first that applies wins, then the quota caps it):

1. ``PYTHON_CPU_COUNT`` / ``-X cpu_count=N`` (3.13's override; honoured
   here on every Python): that number, and no quota cap, since the user
   said so;
2. ``os.process_cpu_count()`` where it exists (3.13+), else the affinity
   mask, else ``os.cpu_count()``;
3. the cgroup quota: v2 ``cpu.max`` (``"max 100000"`` or ``"QUOTA
   PERIOD"``), v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota
   ``-1``: none), in the process's own cgroup and each of its ancestors up
   to the mount (a limit set on a parent applies to its children; the
   tightest wins).

``cpu_count()`` keeps the stdlib's meaning (the machine's CPUs, on every
Python, as ``multiprocessing.cpu_count()`` does even on 3.13).

Rejected: reading ``/proc/self/mountinfo`` to find where each controller
is mounted.  The controllers sit under ``/sys/fs/cgroup`` on every Linux
distribution and container runtime in use; a host that mounts them
elsewhere simply gets no quota cap (the affinity count), never a wrong one.
"""
from __future__ import annotations

import math
import os
import sys

__all__ = ["cgroup_cpu_quota", "cpu_count_override", "process_cpu_count"]

_CGROUP_ROOT = "sys/fs/cgroup"
# Where process_cpu_count() looks for proc/ and sys/ (tests point it at a
# tree of files).
_fs_root = "/"
_V1_CONTROLLER_DIRS = ("cpu,cpuacct", "cpuacct,cpu", "cpu")


def cpu_count_override() -> int | None:
    """The CPU count the user forced with ``-X cpu_count=N`` or
    ``PYTHON_CPU_COUNT=N`` (3.13's override), or None."""
    value = sys._xoptions.get("cpu_count")
    if value is None or value is True:
        value = os.environ.get("PYTHON_CPU_COUNT")
    if not value or value == "default":
        return None
    try:
        count = int(value)
    except ValueError:
        return None
    return count if count > 0 else None


def _affinity_count() -> int | None:
    if hasattr(os, "process_cpu_count"):        # 3.13+
        return os.process_cpu_count()
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_paths(proc_cgroup: str | None) -> tuple[str | None, str | None]:
    """The process's cgroup path in the v2 hierarchy and in v1's ``cpu``
    controller, from the text of ``/proc/self/cgroup``."""
    v2 = v1 = None
    for line in (proc_cgroup or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(base: str, path: str | None) -> list[str]:
    """*base*/*path* and every directory above it up to *base*, deepest
    first.  Directories that do not exist are kept: a container often sees
    its own cgroup as the mount's root while ``/proc/self/cgroup`` still
    names it by its path on the host."""
    parts = [p for p in (path or "/").split("/") if p and p != ".."]
    return [os.path.join(base, *parts[:n]) for n in range(len(parts), -1, -1)]


def _quota_v2(text: str | None) -> float | None:
    fields = (text or "").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(quota_text: str | None, period_text: str | None) -> float | None:
    try:
        quota, period = int(quota_text or ""), int(period_text or "")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_quota(root: str = "/") -> float | None:
    """CPUs' worth of time the process's cgroup quota allows (``2.5`` for
    250 ms per 100 ms), or None when there is no quota (or no cgroup).

    *root* is where ``proc/self/cgroup`` and ``sys/fs/cgroup`` are looked
    up: ``/`` for this process; a test points it at a tree of files.
    """
    v2_path, v1_path = _cgroup_paths(_read(os.path.join(root, "proc/self/cgroup")))
    base = os.path.join(root, _CGROUP_ROOT)
    quotas = []
    if v2_path is not None:
        for directory in _ancestors(base, v2_path):
            quotas.append(_quota_v2(_read(os.path.join(directory, "cpu.max"))))
    if v1_path is not None:
        for controller in _V1_CONTROLLER_DIRS:
            mount = os.path.join(base, controller)
            if not os.path.isdir(mount):
                continue
            for directory in _ancestors(mount, v1_path):
                quotas.append(_quota_v1(
                    _read(os.path.join(directory, "cpu.cfs_quota_us")),
                    _read(os.path.join(directory, "cpu.cfs_period_us"))))
            break
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def process_cpu_count() -> int | None:
    """The number of CPUs this process may use, or None if unknown.

    ``os.process_cpu_count()`` of Python 3.13 (the affinity mask, or the
    ``-X cpu_count`` / ``PYTHON_CPU_COUNT`` override) on every supported
    Python, capped by the cgroup CPU quota of a container (rounded up, at
    least 1).  ``Pool()`` and ``Executor()`` use it (or 1) when no size is
    given.
    """
    forced = cpu_count_override()
    if forced is not None:
        return forced
    count = _affinity_count()
    if sys.platform.startswith("linux"):
        quota = cgroup_cpu_quota(_fs_root)
        if quota is not None:
            limit = max(1, math.ceil(quota))
            count = limit if count is None else min(count, limit)
    return count
