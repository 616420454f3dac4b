"""The delay line's control protocol, client side: a datagram on its unix socket asks for
the counters (and the late and drop windows) or changes queues at one moment; the answer is
JSON. Both cores (Python and C) answer it."""

from __future__ import annotations

import json
import os
import socket
import time

REPLY_BUFFER = 8 << 20


def query_stats(control_path: str, timeout: float = 2.0, reset: bool = False, since: int | None = None) -> dict:
    """Ask a running delay line (either core) for its counters; `reset` starts a new window
    for the maximum release error; `since` (wall ns) asks for the late and drop windows."""
    request = b"stats" + (b" reset" if reset else b"") + (b" since=%d" % since if since is not None else b"")
    return _ask(control_path, request, timeout)


def _ask(control_path: str, request: bytes, timeout: float) -> dict:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    reply_path = f"{control_path}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        client.bind(reply_path)
        client.settimeout(timeout)
        client.sendto(request, control_path)
        return json.loads(client.recv(REPLY_BUFFER))
    finally:
        client.close()
        try:
            os.unlink(reply_path)
        except FileNotFoundError:
            pass


def set_queues(control_path: str, changes: dict[int, tuple[float, float, float]], timeout: float = 2.0) -> int:
    """Change running queues at once: {queue: (delay_ms, jitter_ms, loss_pct)}. Returns the wall
    clock (ns) at which the delay line applied them."""
    request = "set " + " ".join(f"{num}:{delay * 1e3:.3f}:{jitter * 1e3:.3f}:{loss * 1e4:.3f}"
                                for num, (delay, jitter, loss) in sorted(changes.items()))
    answer = _ask(control_path, request.encode(), timeout)
    if "error" in answer:
        raise ValueError(f"delay line refused {request!r}: {answer['error']}")
    return int(answer["applied_ns"])
