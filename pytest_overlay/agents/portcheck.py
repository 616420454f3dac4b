"""Are the swarm ports open between two hosts? Run on the hosts themselves (over ssh), with
only Python's standard library.

    python3 portcheck.py listen ADDRESS SECONDS   # prints "ready", then what arrived, as JSON
    python3 portcheck.py probe ADDRESS TOKEN      # prints the TCP ports it could connect to, as JSON

TCP ports count as open when a connection is accepted; UDP ports when the listener receives
the prober's token.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time

TCP_PORTS = (2377, 7946)
UDP_PORTS = (7946, 4789)


def listen(address: str, seconds: float) -> None:
    sockets, busy = {}, []
    for port in TCP_PORTS:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
            s.listen(16)
            sockets[s] = f"{port}/tcp"
        except OSError:
            busy.append(f"{port}/tcp")
    for port in UDP_PORTS:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((address, port))
            sockets[s] = f"{port}/udp"
        except OSError:
            busy.append(f"{port}/udp")
    print("ready", flush=True)
    received: dict[str, list[str]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readable, _, _ = select.select(list(sockets) + [sys.stdin], [], [], max(0.0, deadline - time.monotonic()))
        for s in readable:
            if s is sys.stdin:
                if not sys.stdin.readline():
                    deadline = 0
                continue
            if s.type == socket.SOCK_STREAM:
                conn, _ = s.accept()
                conn.settimeout(2)
                try:
                    token = conn.recv(64).decode(errors="replace").strip()
                except OSError:
                    token = ""
                conn.close()
            else:
                token = s.recv(64).decode(errors="replace").strip()
            received.setdefault(sockets[s], []).append(token)
    print(json.dumps({"busy": busy, "received": received}), flush=True)


def probe(address: str, token: str) -> None:
    connected = []
    for port in TCP_PORTS:
        try:
            with socket.create_connection((address, port), timeout=3) as s:
                s.sendall(token.encode())
                connected.append(f"{port}/tcp")
        except OSError:
            pass
    for port in UDP_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(3):
                s.sendto(token.encode(), (address, port))
                time.sleep(0.05)
    print(json.dumps({"connected": connected}), flush=True)


if __name__ == "__main__":
    mode, address, arg = sys.argv[1:4]
    if mode == "listen":
        listen(address, float(arg))
    else:
        probe(address, arg)
