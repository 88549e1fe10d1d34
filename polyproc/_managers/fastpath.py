"""The fast path of a manager connection between two processes of one machine.

Why a manager call needs one
----------------------------
A proxy call is a synchronous round trip: the client sends a request and
waits, the server thread wakes, runs the method, replies and waits again,
the client wakes.  On the 2-core virtual machine polyproc is measured on, a
bare round trip through a socket between two processes costs 55-60 us,
nearly all of it the two wake-ups (the host has to schedule a halted
virtual CPU again), against 1 us when both sides are awake and watch a
word of shared memory.  The stdlib's managed dict pays about 50 us per
operation; no protocol over a socket can go much below that.

So a call connection between processes of one machine carries its
messages through shared memory, and each side *spins* for a short while
when it waits for the other: the client for the reply (most calls take the
server a few microseconds), the server for the next request (a loop of
proxy calls sends the next one a few microseconds after the reply).
When the wait is longer, the waiting side falls back to sleeping on the
socket, and the other side wakes it with one byte.

Spinning costs CPU, so it is bounded and adaptive (``SpinPolicy``): a wait
that outlasts its budget halves the next budget, and after a few misses in
a row the side stops spinning and only probes again now and then.  A loop
of calls spins; a process that calls the manager once in a while, or a
machine whose cores are all busy (where spinning would only steal time from
the peer it waits for), goes back to sleeping, i.e. to what the socket
alone costs.  Only one thread per process spins at a time
(``_spin_token``): two spinning threads would fight over the GIL.

The segment
-----------
The client creates it as a sealed ``memfd`` and passes the descriptor over
the Unix socket (``SCM_RIGHTS``) right after the key handshake.  It has no
name, so there is nothing to unlink and nothing to leak when a process is
killed, and the seals stop either side from shrinking it under the other
(``SIGBUS``).  Two *lanes*, one per direction::

    offset 0          lane 0 control (client -> server)
    offset 512        lane 1 control (server -> client)
    offset 4096       lane 0 data, AREA bytes
    offset 4096+AREA  lane 1 data, AREA bytes

    lane control, 8-byte words:
      [0] seq       messages published in the data area   (sender writes)
      [1] length    the length of the last one            (sender writes)
      [2] sock_seq  messages sent on the socket instead   (sender writes)
      [16] sleeping the receiver sleeps on the socket     (receiver writes;
                    its own cache line, away from the sender's words)

A lane's data area holds at most one unread message, and no
acknowledgement is needed for that: the client publishes only requests
there and the server only replies, and each side publishes its next message
only after it has read the other's answer to the last one.  One-way
messages (``DecRef``) and messages larger than the area go on the socket as
``F`` + length + payload, counted by ``sock_seq``; a reordering between a
one-way ``DecRef`` and the next request is harmless (a released object is
kept ``RELEASE_GRACE`` seconds).  The socket otherwise carries only ``W``
bytes that wake a sleeping receiver.

Memory order: the sender writes the data, then ``length``, then ``seq``;
the receiver reads ``seq``, then ``length`` and the data.  x86-64 keeps
stores in order and loads in order (total store order), which is all this
needs; the fast path is therefore enabled only on x86-64 (elsewhere
connections stay on the socket).  The one place TSO is not enough is the
sleep hand-off (the receiver stores ``sleeping`` then loads ``seq``, the
sender stores ``seq`` then loads ``sleeping``: a store may pass a later
load); ``_fence`` puts a locked instruction between the two, and in case
that were ever not enough, a sleeping receiver also looks at ``seq`` again
after 1 ms, so a lost wake-up costs at most that, never a hang.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import socket
import stat
import struct
import threading
import time

from .. import _platform
from .._exceptions import ManagerProtocolError
from .wire import Channel

__all__ = ["FastChannel", "SpinPolicy", "available", "possible", "offer_segment",
           "accept_segment", "SEGMENT_SIZE"]

AREA = 60 * 1024
_CONTROL = 4096
SEGMENT_SIZE = _CONTROL + 2 * AREA
_LANE_CONTROL = (0, 512)                  # byte offsets of the two lanes
_SEQ, _LENGTH, _SOCK_SEQ, _SLEEPING = 0, 1, 2, 16
_SEALS = (getattr(fcntl, "F_SEAL_SHRINK", 0) | getattr(fcntl, "F_SEAL_GROW", 0)
          | getattr(fcntl, "F_SEAL_SEAL", 0))
_WAKE = b"W"
# A gap this long between two looks at the clock while spinning means the
# thread was descheduled.
_PREEMPTED_NS = 50_000
_FRAME = b"F"
_HEADER = struct.Struct("!Q")
# How long a sleeping receiver waits on its socket before it looks at the
# segment again (struct timeval: 1 s): a safety net, see _sleep.
_RCVTIMEO = struct.pack("ll", 1, 0)


def available() -> bool:
    """True where the fast path can run: Linux memfd, x86-64."""
    return (_platform.ORDERED_SHARED_MEMORY and hasattr(os, "memfd_create")
            and hasattr(socket, "send_fds") and hasattr(fcntl, "F_ADD_SEALS"))


def possible(sock: socket.socket) -> bool:
    """Whether the two ends of *sock* exchange a fast-path offer: a plain
    (not TLS) Unix socket.  Both ends decide alike."""
    return sock.family == socket.AF_UNIX and type(sock) is socket.socket


# --- the segment ------------------------------------------------------------

def create_segment() -> tuple[int, mmap.mmap]:
    """A new sealed memfd of ``SEGMENT_SIZE`` bytes, and its mapping."""
    fd = os.memfd_create("polyproc-manager-link",
                         os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, SEGMENT_SIZE)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        return fd, mmap.mmap(fd, SEGMENT_SIZE)
    except BaseException:
        os.close(fd)
        raise


def map_segment(fd: int) -> mmap.mmap:
    """Map a segment received from a client, after checking it is one.

    Raises ``ManagerProtocolError`` for a descriptor that is not a sealed
    regular file of the right size (the server then stays on the socket).
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size != SEGMENT_SIZE:
        raise ManagerProtocolError("fast-path segment has the wrong size")
    if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _SEALS != _SEALS:
        raise ManagerProtocolError("fast-path segment is not sealed")
    return mmap.mmap(fd, SEGMENT_SIZE)


# The exchange, right after the key handshake on a Unix socket (exact-size
# reads on both sides, so no byte carrying a descriptor is ever read by a
# plain recv, which would drop the descriptor):
#     client -> server   b"M" with the descriptor, or b"-" (no fast path)
#     server -> client   b"Y" (mapped) or b"N" (stays on the socket); only
#                        after b"M"

def offer_segment(sock: socket.socket, want: bool) -> mmap.mmap | None:
    """Client side: offer a new segment if *want*; the mapping if taken.

    Blocks for the server's answer (the socket's timeout applies).
    """
    if not want:
        sock.sendall(b"-")
        return None
    fd, segment = create_segment()
    try:
        socket.send_fds(sock, [b"M"], [fd])
    finally:
        os.close(fd)
    answer = sock.recv(1)
    if answer == b"Y":
        return segment
    segment.close()
    if answer == b"N":
        return None
    raise EOFError("connection closed while setting up the fast path")


def accept_segment(sock: socket.socket) -> mmap.mmap | None:
    """Server side: read the client's offer; the mapping if there is one."""
    data, fds, _, _ = socket.recv_fds(sock, 1, 1)
    try:
        if data == b"-":
            return None
        if data != b"M" or len(fds) != 1:
            raise ManagerProtocolError("expected a fast-path offer")
        try:
            segment = map_segment(fds[0])
        except (OSError, ManagerProtocolError):
            sock.sendall(b"N")
            return None
        sock.sendall(b"Y")
        return segment
    finally:
        for fd in fds:
            os.close(fd)


# --- spinning -------------------------------------------------------------------

# One spinning thread per process: a spinning thread holds the GIL, and a
# second one would take it from the first only every switch interval.
_spin_token = threading.Lock()
_fence_lock = threading.Lock()


def _locks_after_fork_in_child() -> None:
    # Another thread of the parent may have held either lock at the fork:
    # the child's copies would stay locked forever (a fence would hang).
    global _spin_token, _fence_lock
    _spin_token = threading.Lock()
    _fence_lock = threading.Lock()


os.register_at_fork(after_in_child=_locks_after_fork_in_child)


def _fence() -> None:
    # A lock's acquire and release are locked read-modify-write
    # instructions on x86-64: a full memory barrier, which plain Python has
    # no other way to express.
    _fence_lock.acquire()
    _fence_lock.release()


class SpinPolicy:
    """How long one side of one connection spins before it sleeps.

    The budget starts at ``MAX_NS``.  A wait that outlasts it (a miss)
    halves it; below ``MIN_NS`` spinning stops.  A wait that ends while
    spinning (a hit) doubles it, up to ``MAX_NS``.

    A side that stopped spinning probes again after ``PROBE_EVERY``
    sleeping waits, with the *whole* budget: when both sides sleep, each
    one's reply or next request comes only after a wake-up of the other
    (tens of microseconds here), so a short probe would always miss and
    the two would never spin again.  A full-length probe catches the
    sleeping peer's answer; the peer, whose counterpart now answers within
    microseconds, then hits on its own next probe.  A probe costs at most
    ``MAX_NS`` of CPU per ``PROBE_EVERY`` calls.
    """

    MAX_NS = 100_000
    MIN_NS = 6_000
    PROBE_EVERY = 16

    __slots__ = ("budget", "sleeps")

    def __init__(self) -> None:
        self.budget = self.MAX_NS
        self.sleeps = 0

    def hit(self) -> None:
        self.budget = min(self.MAX_NS, self.budget * 2)

    def miss(self) -> None:
        self.budget //= 2
        if self.budget < self.MIN_NS:
            self.budget = 0

    def slept(self) -> None:
        """A wait that did not spin at all ended."""
        self.sleeps += 1
        if self.sleeps >= self.PROBE_EVERY:
            self.sleeps = 0
            self.budget = self.MAX_NS


# --- the channel ------------------------------------------------------------------

class FastChannel(Channel):
    """A ``Channel`` whose messages travel through a shared segment.

    *lane* is 0 for the client's end (it sends on lane 0) and 1 for the
    server's.  ``send`` publishes a message; ``send_oneway`` sends one that
    has no reply (always on the socket, see the module docstring);
    ``recv`` spins, then sleeps, until the peer published one.
    """

    __slots__ = ("_map", "_out", "_in", "_out_data", "_in_data", "_sent",
                 "_sent_sock", "_got", "_got_sock", "spin")

    def __init__(self, chan: Channel, segment: mmap.mmap, lane: int):
        # Takes over *chan* (its socket and whatever it has buffered: the
        # server reads the Hello through the plain channel).
        super().__init__(chan.sock, chan.max_frame_size, chan.frame_timeout)
        pending = chan._end - chan._start
        self._buf[:pending] = chan._buf[chan._start:chan._end]
        self._end = pending
        # The socket is ours now; chan.__del__ must not close it.  (chan is
        # dead from here, so its type keeps the socket a live channel has.)
        chan.sock = None  # type: ignore[assignment]
        self._map = segment
        view = memoryview(segment)
        mine, theirs = _LANE_CONTROL[lane], _LANE_CONTROL[1 - lane]
        self._out = view[mine:mine + 512].cast("Q")
        self._in = view[theirs:theirs + 512].cast("Q")
        data = (_CONTROL, _CONTROL + AREA)
        self._out_data = view[data[lane]:data[lane] + AREA]
        self._in_data = view[data[1 - lane]:data[1 - lane] + AREA]
        self._sent = self._sent_sock = self._got = self._got_sock = 0
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                             _RCVTIMEO)
        self.spin = SpinPolicy()

    # close() is Channel's: it closes the socket and leaves the mapping to
    # the garbage collector.  Another thread may be inside recv() on this
    # channel (a manager shutting down closes every connection of the
    # process); it must end with the socket's error, not with a released
    # buffer under its feet.

    # --- sending ----------------------------------------------------------------

    def send(self, payload: bytes | bytearray | memoryview) -> None:
        n = len(payload)
        out = self._out
        if n > AREA or out[_SLEEPING]:
            # A sleeping receiver is woken by bytes on its socket anyway:
            # send them all there, as a plain connection would.
            self.send_oneway(payload)
            return
        self._out_data[:n] = payload
        out[_LENGTH] = n
        self._sent += 1
        out[_SEQ] = self._sent
        _fence()
        if out[_SLEEPING]:        # it fell asleep meanwhile
            try:
                self.sock.send(_WAKE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass          # the socket is full: the receiver will wake

    def send_oneway(self, payload: bytes | bytearray | memoryview) -> None:
        n = len(payload)
        self.check_size(n)
        # Counted before it is written: a large frame fills the socket and
        # blocks sendall until the receiver reads, which it does only once
        # it has seen the count.  The bytes on the socket wake it if it
        # sleeps.
        self._sent_sock += 1
        self._out[_SOCK_SEQ] = self._sent_sock
        if n <= 4096:
            self.sock.sendall(_FRAME + _HEADER.pack(n) + payload)
        else:
            self.sock.sendall(_FRAME + _HEADER.pack(n))
            self.sock.sendall(payload)

    # --- receiving ------------------------------------------------------------------

    def recv(self) -> bytes | bytearray:
        """The next message.  ``EOFError`` when the peer closed;
        ``ManagerProtocolError`` for a broken one."""
        incoming = self._in
        while True:
            if incoming[_SOCK_SEQ] != self._got_sock:
                self._got_sock += 1
                return self._recv_socket_frame()
            if incoming[_SEQ] != self._got:
                n = incoming[_LENGTH]
                if n > AREA:
                    raise ManagerProtocolError(
                        f"fast-path message claims {n} bytes, more than "
                        f"its area of {AREA}")
                self._got += 1
                return bytes(self._in_data[:n])
            self._wait()

    def _published(self) -> bool:
        incoming = self._in
        return (incoming[_SEQ] != self._got
                or incoming[_SOCK_SEQ] != self._got_sock)

    def _wait(self) -> None:
        """Return once the peer published something: spin, then sleep."""
        spin = self.spin
        if spin.budget and _spin_token.acquire(False):
            try:
                if self._spin(spin.budget):
                    spin.hit()
                    return
            finally:
                _spin_token.release()
            spin.miss()
        elif not spin.budget:
            spin.slept()
        self._sleep()

    def _spin(self, budget_ns: int) -> bool:
        """True if the peer published within *budget_ns*.  False when the
        budget ran out, and at once when this thread lost its core."""
        incoming, got, got_sock = self._in, self._got, self._got_sock
        clock = time.perf_counter_ns
        before = clock()
        deadline = before + budget_ns
        while True:
            for _ in range(32):
                if incoming[_SEQ] != got or incoming[_SOCK_SEQ] != got_sock:
                    return True
            now = clock()
            if now - before > _PREEMPTED_NS:
                # Thirty-two reads take about a microsecond: this thread was
                # descheduled meanwhile, so the cores are busy and spinning
                # only takes time from the peer it waits for.  Sleep (a
                # miss: the budget halves).  No sched_yield in this loop for
                # the same reason: with the cores busy it hands a whole time
                # slice to whoever else wants the core.
                return False
            if now > deadline:
                return False
            before = now

    def _sleep(self) -> None:
        incoming = self._in
        incoming[_SLEEPING] = 1
        _fence()
        lingering_since = None
        try:
            while not self._published():
                self._skip_wakeups()
                if self._start < self._end:
                    self._frame_ahead_of_its_count(lingering_since)
                    if lingering_since is None:
                        lingering_since = time.monotonic()
                    time.sleep(0)
                    continue
                self._recv_some()
        finally:
            incoming[_SLEEPING] = 0

    def _frame_ahead_of_its_count(self, since: float | None) -> None:
        """Bytes on the socket that no count announces yet.

        An honest peer counts a socket frame before it writes it, so this
        lasts a moment (the count's store becoming visible); anything else
        is a broken peer, which must cost its connection, not a thread
        spinning here for ever.
        """
        if self._buf[self._start] != 0x46:                 # b"F"
            raise ManagerProtocolError(
                "unexpected byte on a fast-path connection's socket")
        if since is not None and time.monotonic() - since > self.frame_timeout:
            raise ManagerProtocolError(
                "a frame arrived on the socket that the peer never counted")

    def _recv_some(self) -> None:
        """Block until bytes arrive on the socket (a ``W``, or a frame).

        A plain blocking ``recv``, not ``poll``: on the virtual machines
        measured, a task woken from ``poll`` costs a round trip about 30 us
        more than one woken from ``recv`` (the socket's wake-up hints that
        the waker is about to sleep, so the kernel runs the woken task on
        the waker's core instead of waking an idle one).  ``SO_RCVTIMEO``
        bounds the wait, so that a lost wake-up could never mean a hang.
        """
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):
            return                       # full of a frame's bytes already
        try:
            n = self.sock.recv_into(self._view[self._end:])
        except BlockingIOError:          # SO_RCVTIMEO ran out
            return
        if not n:
            raise EOFError("connection closed")
        self._end += n

    def _skip_wakeups(self) -> None:
        buf, start, end = self._buf, self._start, self._end
        while start < end and buf[start] == 0x57:      # b"W"
            start += 1
        self._start = start

    def _recv_socket_frame(self) -> bytes | bytearray:
        while True:
            self._skip_wakeups()
            if self._start == self._end:
                self._recv_some()
                continue
            if self._buf[self._start] != 0x46:             # b"F"
                raise ManagerProtocolError(
                    "unexpected byte on a fast-path connection's socket")
            self._start += 1
            return Channel.recv(self)
