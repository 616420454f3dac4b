"""The NFQUEUE netlink messages the delay line speaks (nfnetlink_queue: bind, config,
packets in, batch verdicts out), and the kernel's own per-queue drop counters."""

from __future__ import annotations

import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_TIMESTAMP = 4
NFQA_CAP_LEN = 13  # the packet's length, where less of it is copied
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_PACKET = 2
COPY_RANGE = 1
NFQA_CFG_F_GSO = 4
NF_DROP = 0
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2

def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def message(msg: int, res_id: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", res_id) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def kernel_queue_counters() -> dict[int, dict]:
    """The kernel's own per-queue drops (queue or socket full), for this network namespace."""
    counters = {}
    try:
        with open("/proc/self/net/netfilter/nfnetlink_queue") as f:
            for line in f:
                cols = line.split()
                counters[int(cols[0])] = {"kernel_dropped": int(cols[5]), "kernel_user_dropped": int(cols[6])}
    except FileNotFoundError:
        pass
    return counters
