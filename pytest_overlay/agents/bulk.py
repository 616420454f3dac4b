"""A bounded bulk TCP transfer that tells a path MTU black hole from a slow path, with only
Python's standard library (it runs in the measurement image and in a site's namespace).

    python3 bulk.py sink ADDRESS PORT SECONDS   # prints "ready", then what arrived, as JSON
    python3 bulk.py send ADDRESS PORT SECONDS   # sends full-size writes; prints JSON

The sender reads its own TCP_INFO every 50 ms: what the receiver acknowledged, and when the
first full segment's worth was, is what crossed. Neither side ever waits past SECONDS plus
a few: a black hole ends as a result, not a hang.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

CONNECT_S = 5.0
POLL_S = 0.05
CHUNK = 64 * 1024
# struct tcp_info (linux/tcp.h): 8 one-byte fields, 24 u32 (to tcpi_total_retrans), then u64s.
_U32 = struct.Struct("8B24I")
_BYTES_ACKED = _U32.size + 16  # after tcpi_pacing_rate and tcpi_max_pacing_rate
FIELDS = {"snd_mss": 10, "pmtu": 21, "total_retrans": 31}  # indexes into the unpacked tuple


def tcp_info(sock: socket.socket) -> dict[str, int]:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    values = _U32.unpack_from(raw)
    info = {name: values[i] for name, i in FIELDS.items()}
    info["bytes_acked"] = struct.unpack_from("Q", raw, _BYTES_ACKED)[0] if len(raw) >= _BYTES_ACKED + 8 else 0
    return info


def send(address: str, port: int, seconds: float) -> dict:
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_S)
    began = time.monotonic()
    try:
        sock.connect((address, port))
    except OSError as e:
        return {"connected": False, "error": str(e), "seconds": round(time.monotonic() - began, 3)}
    connected = time.monotonic()
    sock.setblocking(False)
    data = b"\x00" * CHUNK
    written, first_ack, info = 0, None, tcp_info(sock)
    deadline, next_poll = connected + seconds, connected
    while (now := time.monotonic()) < deadline:
        try:
            written += sock.send(data)
        except BlockingIOError:
            time.sleep(0.002)
        except OSError as e:
            info["error"] = str(e)
            break
        if now >= next_poll:
            info = tcp_info(sock)
            if first_ack is None and info["bytes_acked"] > 2 * max(1, info["snd_mss"]):
                first_ack = now - connected
            next_poll = now + POLL_S
    info = tcp_info(sock) | ({"error": info["error"]} if "error" in info else {})
    if first_ack is None and info["bytes_acked"] > 2 * max(1, info["snd_mss"]):
        first_ack = time.monotonic() - connected
    elapsed = time.monotonic() - connected
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset: no FIN to wait for
    sock.close()
    return {"connected": True, "connect_ms": round((connected - began) * 1e3, 3), "seconds": round(elapsed, 3),
            "written": written, "first_ack_ms": None if first_ack is None else round(first_ack * 1e3, 1), **info}


def sink(address: str, port: int, seconds: float) -> dict:
    listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(1)
    print("ready", flush=True)
    listener.settimeout(seconds + CONNECT_S)
    try:
        conn, _ = listener.accept()
    except OSError:
        return {"accepted": False, "bytes": 0}
    accepted = time.monotonic()
    conn.settimeout(0.5)
    received, first = 0, None
    while time.monotonic() < accepted + seconds + 2:
        try:
            chunk = conn.recv(CHUNK)
        except socket.timeout:
            continue
        except OSError:
            break
        if not chunk:
            break
        if first is None:
            first = time.monotonic() - accepted
        received += len(chunk)
    return {"accepted": True, "bytes": received, "first_byte_ms": None if first is None else round(first * 1e3, 1)}


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] not in ("send", "sink"):
        print(__doc__, file=sys.stderr)
        return 2
    role, address, port, seconds = argv[0], argv[1], int(argv[2]), float(argv[3])
    print(json.dumps((send if role == "send" else sink)(address, port, seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
