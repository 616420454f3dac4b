"""A userspace delay line on NFQUEUE: the link emulator for kernels without sch_netem.

The kernel keeps every packet; this process only learns its id, time and length (one byte
of payload is copied, GSO packets whole) and hands back verdicts when the packet is due. Accepts go out as batch
verdicts, so one syscall releases every packet that fell due together.

Run inside the testbed's wan namespace, one queue per link direction (the packets forwarded
from that direction's ingress interface):

    python -m pytest_overlay.emulation.delayline CONFIG_JSON

This is the portable core; where a C compiler is present the emulator runs the compiled
core (core/delayline.c), which speaks the same control protocol at a tenth of the CPU.

CONFIG_JSON: {"control": "/path/to/unix.sock", "seed": 1,
              "queues": [{"num": 0, "delay_ms": 18.0, "jitter_ms": 0.1, "loss_pct": 0, "maxlen": 4096}]}

It prints ``ready`` once every queue is bound. A datagram ``stats`` on the control socket
is answered with the counters as JSON (``stats reset`` also restarts the window maximum;
``since=NS`` adds each queue's late and drop windows that ended at or after NS, wall-clock
nanoseconds). SIGTERM or SIGINT ends it.

Late releases and the kernel's queue drops come in bursts (this process or its vCPU
descheduled), so each queue keeps a short timeline of them: one window [first due, last
release] per burst, merged when they touch. A probe's samples are matched against it.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time

from .control import REPLY_BUFFER
from .linkqueue import DEFAULT_MAXLEN, HIST_EDGES_US, Queue
from .netlink import (
    COPY_RANGE,
    NETLINK_NETFILTER,
    NF_ACCEPT,
    NF_DROP,
    NFNL_SUBSYS_QUEUE,
    NFQA_CAP_LEN,
    NFQA_CFG_CMD,
    NFQA_CFG_F_GSO,
    NFQA_CFG_FLAGS,
    NFQA_CFG_MASK,
    NFQA_CFG_PARAMS,
    NFQA_CFG_QUEUE_MAXLEN,
    NFQA_PACKET_HDR,
    NFQA_TIMESTAMP,
    NFQA_VERDICT_HDR,
    NFQNL_CFG_CMD_BIND,
    NFQNL_COPY_PACKET,
    NFQNL_MSG_CONFIG,
    NFQNL_MSG_PACKET,
    NFQNL_MSG_VERDICT,
    NFQNL_MSG_VERDICT_BATCH,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    attr,
    kernel_queue_counters,
    message,
)

SOCKET_BUFFER = 64 << 20
CALIBRATION_ROUNDS = 40
MAX_SPIN_S = 0.0003
# Spin only under light traffic (probes of latency); under load arrivals keep the loop busy.
SPIN_MAX_PENDING = 256
LOADED_MIN_SLEEP_S = 0.00005
PR_SET_TIMERSLACK = 29
SO_TIMESTAMPNS = 35
WIRE_MTU = 1500  # a GSO packet's length over this is how many packets it stands for
DROP_POLL_S = 0.02


class DelayLine:
    def __init__(self, queues: list[Queue], seed: int | None = None) -> None:
        self.queues = {q.num: q for q in queues}
        self.random = random.Random(seed)
        self.enobufs = 0
        self.stamped = 0
        self.wake_lag = 0.0
        self.wall_offset = time.time() - time.monotonic()
        self.last_drop_poll = 0.0
        # Any socket asking for receive timestamps makes the kernel stamp every packet.
        self.stamp_request = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.stamp_request.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        for opt in (33, 32):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE: root may exceed rmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        self.sock.bind((0, 0))
        self.seq = 0

    def _request(self, msg: int, res_id: int, attrs: bytes) -> None:
        """Send a config request and wait for its acknowledgement."""
        self.seq += 1
        self.sock.send(message(msg, res_id, attrs, NLM_F_REQUEST | NLM_F_ACK, self.seq))
        while True:
            data = self.sock.recv(65536)
            length, kind, _, seq, _ = struct.unpack_from("=IHHII", data)
            if kind == NLMSG_ERROR and seq == self.seq:
                code = struct.unpack_from("=i", data, 16)[0]
                if code:
                    raise OSError(-code, f"NFQUEUE config of queue {res_id}: {os.strerror(-code)}")
                return

    def bind(self) -> None:
        for num, queue in self.queues.items():
            self._request(NFQNL_MSG_CONFIG, num, attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
            self._request(
                NFQNL_MSG_CONFIG,
                num,
                # One byte of payload, not metadata only: only then does the kernel say the
                # packet's length (NFQA_CAP_LEN), which tells a GSO burst from one packet.
                attr(NFQA_CFG_PARAMS, struct.pack("!IB", COPY_RANGE, NFQNL_COPY_PACKET))
                + attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", queue.maxlen))
                + attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO))
                + attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO)),
            )
        self.sock.setblocking(False)

    def _verdict(self, msg: int, num: int, verdict: int, packet_id: int) -> None:
        self.sock.send(message(msg, num, attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))))

    def _arrival(self, data: bytes, now: float) -> tuple[float, int]:
        """When the packet reached the wan namespace, on the monotonic clock, and how many
        wire packets it stands for.

        The kernel stamps it on receive (NFQA_TIMESTAMP, wall clock) while any socket asks
        for timestamps, which this process does; without a stamp, the time it was read. A
        GSO packet (up to 64 KB of one TCP flow, queued whole) is as many MTU-sized packets
        as its length (NFQA_CAP_LEN) makes.
        """
        offset, end = 20, len(data)
        arrival, segments = now, 1
        while offset + 4 <= end:
            length, kind = struct.unpack_from("=HH", data, offset)
            if length < 4:
                break
            kind &= 0x7FFF
            if kind == NFQA_TIMESTAMP and length >= 20:
                sec, usec = struct.unpack_from("!QQ", data, offset + 4)
                if sec:
                    self.stamped += 1
                    arrival = sec + usec / 1e6 - self.wall_offset
            elif kind == NFQA_CAP_LEN and length >= 8:
                segments = max(1, -(-struct.unpack_from("!I", data, offset + 4)[0] // WIRE_MTU))
            offset += (length + 3) & ~3
        return arrival, segments

    def _receive(self, now: float, budget: int = 64) -> None:
        """Take up to `budget` queued packets off the socket and schedule them."""
        recv = self.sock.recv
        queues = self.queues
        rnd = self.random.random
        self.wall_offset = time.time() - time.monotonic()
        for _ in range(budget):
            try:
                data = recv(512)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.enobufs += 1
                continue
            if len(data) < 28 or data[4] != NFQNL_MSG_PACKET or data[5] != NFNL_SUBSYS_QUEUE:
                continue
            queue = queues.get(struct.unpack_from("!H", data, 18)[0])
            if queue is None or struct.unpack_from("=H", data, 22)[0] & 0x7FFF != NFQA_PACKET_HDR:
                continue
            packet_id = struct.unpack_from("!I", data, 24)[0]
            queue.queued += 1
            arrival, segments = self._arrival(data, now)
            # Loss is per wire packet: a GSO burst of n goes whole with the chance that any
            # of its n would have, as TCP then sees one loss event either way.
            if queue.loss and rnd() < 1 - (1 - queue.loss) ** segments:
                queue.lost += 1
                self._verdict(NFQNL_MSG_VERDICT, queue.num, NF_DROP, packet_id)
                continue
            # Reordering as netem's: sent on at once, ahead of every packet still held.
            if queue.reorder and queue.pending and rnd() < queue.reorder:
                queue.reordered += 1
                self._verdict(NFQNL_MSG_VERDICT, queue.num, NF_ACCEPT, packet_id)
                continue
            due = arrival + queue.delay_s
            if queue.jitter_s:
                due += (2 * rnd() - 1) * queue.jitter_s
            # Never reorder: a packet leaves no earlier than the one before it.
            if due < queue.last_due:
                due = queue.last_due
            queue.last_due = due
            queue.pending.append((due, packet_id))

    def calibrate(self) -> float:
        """The spin window: twice how late a short timed sleep wakes (75th percentile of 40),
        plus 50 µs, at most 300 µs. The loop sleeps until that long before a deadline and
        spins the rest."""
        lags = []
        for _ in range(CALIBRATION_ROUNDS):
            start = time.monotonic()
            select.select([], [], [], 0.0005)
            lags.append(time.monotonic() - start - 0.0005)
        self.wake_lag = min(MAX_SPIN_S, 2 * max(0.0, sorted(lags)[len(lags) * 3 // 4]) + 0.00005)
        return self.wake_lag

    def _release(self, now: float) -> float:
        """Accept every packet due by now; return the next deadline (inf if none). Lateness
        counts from when the verdict was sent: a stall between deciding and sending must show."""
        next_due = float("inf")
        for queue in self.queues.values():
            pending = queue.pending
            released = []
            while pending and pending[0][0] <= now:
                released.append(pending.popleft())
            if released:
                self._verdict(NFQNL_MSG_VERDICT_BATCH, queue.num, NF_ACCEPT, released[-1][1])
                sent = time.monotonic()
                for due, _ in released:
                    queue.count_release(sent - due, due, self.wall_offset)
            if pending and pending[0][0] < next_due:
                next_due = pending[0][0]
        return next_due

    def pending(self) -> int:
        return sum(len(q.pending) for q in self.queues.values())

    def poll_kernel_drops(self, now: float) -> dict[int, dict]:
        """The kernel's drops per queue; an increase since the last poll becomes a drop
        window over the time between the polls."""
        kernel = kernel_queue_counters()
        wall = int((now + self.wall_offset) * 1e9)
        since = int((self.last_drop_poll + self.wall_offset) * 1e9) if self.last_drop_poll else wall
        self.last_drop_poll = now
        for num, counts in kernel.items():
            queue = self.queues.get(num)
            if queue is None:
                continue
            total = counts["kernel_dropped"] + counts["kernel_user_dropped"]
            if total > queue.kernel_drops:
                queue.note_window(since, wall, dropped=total - queue.kernel_drops)
            queue.kernel_drops = total
        return kernel

    def _spin(self, due: float) -> None:
        """Busy-wait the last stretch to a deadline, taking packets as they come."""
        clock = time.monotonic
        while clock() < due:
            self._receive(clock(), budget=8)

    def stats(self, reset: bool = False, since: int | None = None) -> dict:
        """Counters; `reset` starts a new window for the window maximum; `since` (wall ns)
        adds each queue's windows that ended then or later."""
        now = time.monotonic()
        self.wall_offset = time.time() - now
        kernel = self.poll_kernel_drops(now)
        return {
            "pid": os.getpid(),
            "now_ns": int((now + self.wall_offset) * 1e9),
            "core": "python",
            "enobufs": self.enobufs,
            "wake_lag_us": round(self.wake_lag * 1e6, 1),
            "kernel_stamped": self.stamped,
            "hist_edges_us": list(HIST_EDGES_US),
            "queues": {str(n): {**q.counters(reset), **kernel.get(n, {}),
                                **(q.windows_since(since) if since is not None else {})}
                       for n, q in self.queues.items()},
        }

    def set_queues(self, request: str) -> dict:
        """"set NUM:DELAY_US:JITTER_US:LOSS_PPM ...": a WAN fault starting or healing, on every
        queue named at once (all are checked first); packets already queued keep their times."""
        changes = []
        for item in request.split()[1:]:
            try:
                num, delay_us, jitter_us, loss_ppm = item.split(":")
                change = (self.queues[int(num)], float(delay_us), float(jitter_us), float(loss_ppm))
            except (ValueError, KeyError):
                return {"error": f"bad item {item[:40]}"}
            if min(change[1:]) < 0 or change[3] > 1e6:
                return {"error": f"no queue or bad value in {item[:40]}"}
            changes.append(change)
        for queue, delay_us, jitter_us, loss_ppm in changes:
            queue.delay_s, queue.jitter_s, queue.loss = delay_us / 1e6, jitter_us / 1e6, loss_ppm / 1e6
        return {"applied_ns": time.time_ns(), "queues": len(changes)}

    def run(self, control: socket.socket | None) -> None:
        fds = [self.sock] + ([control] if control else [])
        clock = time.monotonic
        while True:
            next_due = self._release(clock())
            if clock() - self.last_drop_poll >= DROP_POLL_S:  # after the release: the loop wakes for deadlines
                self.poll_kernel_drops(clock())
            if next_due == float("inf"):
                timeout = DROP_POLL_S
            elif self.pending() <= SPIN_MAX_PENDING:
                # Light traffic: sleep to just short of the deadline, then spin to it.
                timeout = next_due - clock() - self.wake_lag
                if timeout <= 0:
                    self._spin(next_due)
                    continue
            else:
                # Under load, never busy-wait: the CPU belongs to the traffic's endpoints.
                timeout = max(next_due - clock(), LOADED_MIN_SLEEP_S)
            readable, _, _ = select.select(fds, [], [], min(timeout, DROP_POLL_S))
            if self.sock in readable:
                self._receive(clock())
            if control is not None and control in readable:
                request, peer = control.recvfrom(16384)
                if request.startswith(b"set ") and peer:
                    control.sendto(json.dumps(self.set_queues(request.decode(errors="replace"))).encode(), peer)
                elif request.startswith(b"stats") and peer:
                    since = request.partition(b"since=")[2].split(b" ")[0]
                    stats = self.stats(b"reset" in request, int(since) if since.isdigit() else None)
                    control.sendto(json.dumps(stats).encode(), peer)


def _tune_process() -> None:
    """Wake on time: 1 ns timer slack, and a real-time priority where allowed."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
    except (OSError, AttributeError):
        pass


class _Stop(Exception):
    pass


def _stop(signum, frame):
    raise _Stop()


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    queues = [
        Queue(
            num=q["num"],
            delay_s=q["delay_ms"] / 1e3,
            jitter_s=q.get("jitter_ms", 0.0) / 1e3,
            loss=q.get("loss_pct", 0.0) / 100.0,
            maxlen=q.get("maxlen", DEFAULT_MAXLEN),
            reorder=q.get("reorder_pct", 0.0) / 100.0,
        )
        for q in config["queues"]
    ]
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    control = None
    try:
        line = DelayLine(queues, config.get("seed"))
        line.bind()
        if config.get("control"):
            control = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            control.bind(config["control"])
            control.setsockopt(socket.SOL_SOCKET, 32, REPLY_BUFFER)  # SO_SNDBUFFORCE: one datagram a reply
        _tune_process()
        # Nothing here makes reference cycles; a collection pass over a full queue would
        # stall releases for milliseconds.
        gc.disable()
        line.calibrate()
        print("ready", flush=True)
        line.run(control)
    except _Stop:
        return 0
    finally:
        if control is not None:
            control.close()
            try:
                os.unlink(config["control"])
            except FileNotFoundError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
