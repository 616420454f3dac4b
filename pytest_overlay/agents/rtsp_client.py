"""RTSP clients that measure what a viewer gets: N concurrent sessions in one process.

Each client does DESCRIBE, SETUP (RTP over UDP, or interleaved in the RTSP connection over
TCP) and PLAY, then receives RTP for the given time and reports, per client: RFC 3550
interarrival jitter, received bitrate, loss, reordering and time to first frame. The process
reports its own CPU use, so a level where the clients were CPU-bound can be told apart from
network jitter. Standard library only: it runs inside measurement containers too.

    python3 rtsp_client.py URL --clients N --seconds S [--transport udp|tcp] [--bind ADDR]

Prints one JSON document on stdout; exit status 2 if any client failed.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import struct
import sys
import time

RTP_CLOCK_HZ = 90_000  # H.264 over RTP (RFC 6184)
SO_TIMESTAMPNS = 35
CMSG_SPACE = socket.CMSG_SPACE(16)
now = time.time  # wall clock: the kernel's receive timestamps are on it


class ClientError(Exception):
    pass


def timestamp_delta(earlier: int, later: int) -> int:
    """later - earlier for 32-bit RTP timestamps, across a wrap (RFC 3550 serial arithmetic)."""
    d = (later - earlier) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d


def extend_sequence(highest: int, seq: int) -> int:
    """A 16-bit RTP sequence number extended with cycles: the value nearest the highest
    extended number seen so far, so a wrap counts forward and a late packet backward."""
    candidate = (highest & ~0xFFFF) | seq
    if candidate - highest > 0x8000:
        candidate -= 0x10000
    elif highest - candidate > 0x8000:
        candidate += 0x10000
    return candidate


def jitter_step(jitter: float, last_arrival: float | None, last_timestamp: int | None, arrival: float,
                timestamp: int) -> tuple[float, float, int]:
    """One packet's update of the RFC 3550 interarrival jitter (in timestamp units):
    J += (|D(i-1, i)| - J) / 16, D = (Rj - Ri) - (Sj - Si), arrivals in seconds."""
    if last_arrival is not None:
        d = (arrival - last_arrival) * RTP_CLOCK_HZ - timestamp_delta(last_timestamp, timestamp)
        jitter += (abs(d) - jitter) / 16
    return jitter, arrival, timestamp


class Client:
    def __init__(self, index: int, url: str, transport: str, bind: str) -> None:
        self.index, self.url, self.transport, self.bind = index, url, transport, bind
        self.cseq = 0
        self.session = ""
        self.rtsp = socket.create_connection(_host_port(url), timeout=10)
        self.buffer = b""
        self.rtp: socket.socket | None = None
        self.play_sent = 0.0
        self.first_frame: float | None = None
        self.packets = self.bytes = self.reordered = 0
        self.base_seq: int | None = None
        self.max_ext_seq = -1
        self.jitter = 0.0  # RFC 3550, in timestamp units
        self.last_arrival: float | None = None
        self.last_timestamp: int | None = None
        self.first_packet: float | None = None
        self.last_packet: float | None = None

    def request(self, method: str, url: str, headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
        self.cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self.cseq}", "User-Agent: pytest-overlay"]
        if self.session:
            lines.append(f"Session: {self.session}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.rtsp.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while True:
            self._take_frames(now())
            if not self.buffer.startswith(b"$") and b"\r\n\r\n" in self.buffer:
                break
            chunk = self.rtsp.recv(65536)
            if not chunk:
                raise ClientError(f"{method}: server closed the connection")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status, *header_lines = head.decode(errors="replace").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        length = int(fields.get("content-length", 0))
        while len(self.buffer) < length:
            self.buffer += self.rtsp.recv(65536)
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        parts = status.split(" ", 2)
        if len(parts) < 2 or parts[1] != "200":
            raise ClientError(f"{method} {url} answered {status!r}")
        return fields, body

    def start(self) -> None:
        _, sdp = self.request("DESCRIBE", self.url, {"Accept": "application/sdp"})
        control = next((line[len("a=control:"):].strip() for line in sdp.decode(errors="replace").splitlines()
                        if line.startswith("a=control:") and line.strip() != "a=control:*"), "")
        track = control if control.startswith("rtsp://") else f"{self.url.rstrip('/')}/{control}" if control else self.url
        if self.transport == "udp":
            self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            self.rtp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.rtp.bind((self.bind, 0))
            port = self.rtp.getsockname()[1]
            transport = f"RTP/AVP;unicast;client_port={port}-{port + 1}"
        else:
            transport = "RTP/AVP/TCP;unicast;interleaved=0-1"
        fields, _ = self.request("SETUP", track, {"Transport": transport})
        self.session = fields.get("session", "").split(";")[0]
        self.play_sent = now()
        self.request("PLAY", self.url, {"Range": "npt=0.000-"})
        self.rtsp.setblocking(False)
        if self.rtp is not None:
            self.rtp.setblocking(False)

    def on_rtp(self, packet: bytes, now: float) -> None:
        if len(packet) < 12:
            return
        marker = packet[1] & 0x80
        seq, timestamp = struct.unpack_from("!HI", packet, 2)
        self.packets += 1
        self.bytes += len(packet)
        if self.first_packet is None:
            self.first_packet = now
        self.last_packet = now
        if marker and self.first_frame is None:
            self.first_frame = now
        if self.base_seq is None:
            self.base_seq, self.max_ext_seq = seq, seq
        else:
            ext = extend_sequence(self.max_ext_seq, seq)
            if ext > self.max_ext_seq:
                self.max_ext_seq = ext
            elif ext < self.max_ext_seq:
                self.reordered += 1
        self.jitter, self.last_arrival, self.last_timestamp = jitter_step(
            self.jitter, self.last_arrival, self.last_timestamp, now, timestamp)

    def on_interleaved(self, now: float) -> None:
        try:
            chunk = self.rtsp.recv(1 << 20)
        except BlockingIOError:
            return
        self.buffer += chunk
        self._take_frames(now)
        if self.buffer and self.buffer[0:1] != b"$" and b"\r\n\r\n" in self.buffer:
            self.buffer = self.buffer.partition(b"\r\n\r\n")[2]  # an RTSP answer among the frames

    def _take_frames(self, now: float) -> None:
        """RTP frames interleaved in the RTSP connection ($, channel, length, packet)."""
        while len(self.buffer) >= 4 and self.buffer[0:1] == b"$":
            channel, length = self.buffer[1], struct.unpack_from("!H", self.buffer, 2)[0]
            if len(self.buffer) < 4 + length:
                return
            if channel == 0 and self.play_sent:
                self.on_rtp(self.buffer[4:4 + length], now)
            self.buffer = self.buffer[4 + length:]

    def on_datagrams(self) -> None:
        """Every RTP datagram waiting, dated by the kernel's receive timestamp."""
        while True:
            try:
                packet, ancillary, _, _ = self.rtp.recvmsg(65536, CMSG_SPACE)
            except BlockingIOError:
                return
            arrival = now()
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                    sec, nsec = struct.unpack("qq", data[:16])
                    arrival = sec + nsec / 1e9
            self.on_rtp(packet, arrival)

    def report(self) -> dict:
        expected = self.max_ext_seq - self.base_seq + 1 if self.base_seq is not None else 0
        span = (self.last_packet - self.first_packet) if self.packets > 1 else 0.0
        return {
            "client": self.index,
            "packets": self.packets,
            "jitter_ms": self.jitter / RTP_CLOCK_HZ * 1000,
            "bitrate_kbit": self.bytes * 8 / span / 1000 if span else 0.0,
            "loss_pct": max(0, expected - self.packets) / expected * 100 if expected else 100.0,
            "reordered": self.reordered,
            "ttff_ms": (self.first_frame - self.play_sent) * 1000 if self.first_frame else None,
        }

    def close(self) -> None:
        try:
            self.rtsp.setblocking(True)
            self.rtsp.settimeout(1)
            self.request("TEARDOWN", self.url, {})
        except (OSError, ClientError):
            pass
        self.rtsp.close()
        if self.rtp is not None:
            self.rtp.close()


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = rest.partition(":")
    return host, int(port or 554)


def run(url: str, clients: int, seconds: float, transport: str, bind: str) -> dict:
    started_cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    sessions, errors = [], []
    sel = selectors.DefaultSelector()

    def serve(timeout: float) -> None:
        for key, _ in sel.select(timeout=timeout):
            client = key.data
            if client.rtp is not None:
                client.on_datagrams()
            else:
                client.on_interleaved(now())

    for i in range(clients):
        try:
            client = Client(i, url, transport, bind)
        except OSError as e:
            errors.append(f"client {i}: cannot connect to {url}: {e}")
            continue
        try:
            client.start()
        except (OSError, ClientError) as e:
            errors.append(f"client {i}: {e}")
            client.rtsp.close()
            continue
        sessions.append(client)
        sel.register(client.rtp if client.rtp is not None else client.rtsp, selectors.EVENT_READ, client)
        serve(0)  # keep the clients already playing read on time
    measure_from = time.monotonic()
    deadline = measure_from + seconds
    while time.monotonic() < deadline:
        serve(0.2)
    wall = time.monotonic() - measure_from
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    reports = [c.report() for c in sessions]
    for client in sessions:
        client.close()
        if client.packets == 0:
            errors.append(f"client {client.index}: no RTP arrived in {seconds:g} s")
    return {
        "url": url, "transport": transport, "clients": clients, "seconds": wall,
        "setup_seconds": measure_from - started,
        "cpu_pct": (cpu.ru_utime + cpu.ru_stime - started_cpu.ru_utime - started_cpu.ru_stime)
                   / (time.monotonic() - started) * 100,
        "reports": reports, "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    parser.add_argument("--bind", default="0.0.0.0")
    args = parser.parse_args()
    try:
        result = run(args.url, args.clients, args.seconds, args.transport, args.bind)
    except OSError as e:
        result = {"url": args.url, "errors": [f"cannot reach the server: {e}"], "reports": []}
    print(json.dumps(result))
    return 2 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
