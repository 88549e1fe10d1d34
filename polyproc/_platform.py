"""What the shared-memory protocols need from the machine, decided once.

The ring under polyproc's queues (``_queue.ring``) and the fast path of
manager connections (``_managers.fastpath``) publish data to other processes
with plain stores, in order, and rely on other processes seeing them in that
order.  x86-64 promises that (total store order); weakly ordered CPUs
(arm64) do not without barriers that Python cannot issue.  Both also need
Linux (futexes, memfd).  Elsewhere polyproc uses the stdlib's designs.

``os.uname()`` rather than ``platform.machine()``: the same answer, without
importing ``platform`` (a millisecond at the start of every child process).
"""
from __future__ import annotations

import os
import sys

MACHINE = os.uname().machine if hasattr(os, "uname") else ""
LINUX = sys.platform.startswith("linux")
# Linux on a CPU with total store order: the shared-memory protocols run.
ORDERED_SHARED_MEMORY = LINUX and MACHINE == "x86_64"
