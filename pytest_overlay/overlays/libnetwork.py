"""Docker's own overlay (libnetwork): a swarm across the sites' engines and an attachable
VXLAN network, one measurement container per site."""

from __future__ import annotations

import concurrent.futures
import re
import time

from .. import procs
from ..testbeds.contract import Testbed, host_port
from ..testbeds.engines import LABEL, SWARM_LABEL, Engine, EngineError
from .base import OverlayUnavailable
from .containers import ContainerOverlay

VXLAN_PORT = 4789
BULK_SYNC_TIMEOUT_S = 30.0  # networkdb/cluster.go bulkSyncNode: how long a bulk sync waits for its answer
BULK_SYNC_STALL = re.compile(r"[Bb]ulk sync to node \S+ timed out")


def esp_available(netns: str) -> tuple[bool, str]:
    """Try an ESP security association with AES-GCM, as Docker's encrypted overlay needs."""
    result = procs.run(["ip", "xfrm", "state", "add", "src", "198.18.255.1", "dst", "198.18.255.2", "proto", "esp",
                        "spi", "0x100", "reqid", "1", "mode", "transport",
                        "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128"], netns)
    if result.ok:
        procs.run(["ip", "xfrm", "state", "flush"], netns)
        return True, "kernel has ESP with AES-GCM"
    answer = (result.stderr or result.stdout).strip().splitlines()
    return False, f"kernel lacks ESP/GCM (ip xfrm: {answer[-1] if answer else result.rc}): encrypted overlay unavailable"


class LibnetworkOverlay(ContainerOverlay):
    """Docker's own overlay: a swarm across the sites and an attachable VXLAN network."""

    name = "libnetwork"
    ipv6_unsupported = ("Docker 20.10's swarm forms over IPv6, but its overlay's VXLAN carried no container's packet "
                        "to another within 32 s (tried here)")
    label = "Docker overlay (libnetwork)"
    in_all = True
    description = "Docker swarm overlay network (libnetwork, VXLAN UDP 4789)"
    encrypted = False
    # A worker's attachment to the network waits 20 s for the manager's allocation, which
    # a loaded machine or a long WAN can exceed.
    transient = ("attaching to network failed", "context deadline exceeded")

    def __init__(self, testbed: Testbed, **settings) -> None:
        super().__init__(testbed, **settings)
        self.network = f"ovl{testbed.run_id}-{self.name}"
        self.vni: str | None = None
        self._swarm_manager: Engine | None = None  # on real hosts, the existing swarm's manager

    def up(self) -> None:
        if self.encrypted:
            ok, why = esp_available(self.testbed.wan)
            if not ok:
                raise OverlayUnavailable(why)
        started = time.monotonic()
        try:
            image = self._start_engines()
            self._swarm()
            self._network()
            self._run_containers(image, lambda engine, c: c.attrs["NetworkSettings"]["Networks"][self.network]["IPAddress"],
                                 network=self.network)
        except BaseException:
            self.down()
            raise
        self.testbed.count_udp(VXLAN_PORT)
        self.timings["up_s"] = time.monotonic() - started
        self._progress(f"up in {self.timings['up_s']:.1f} s: network {self.network} (VNI {self.vni}, MTU {self.mtu}), "
                       f"{len(self.containers)} containers")

    def _manager(self) -> Engine:
        if self._swarm_manager is not None:
            return self._swarm_manager
        return self.engines[self.testbed.topology.manager or next(iter(self.engines))]

    def _swarm(self) -> None:
        manager, create = self.testbed.swarm(self._manager())
        if not create:
            self._swarm_manager = manager
            self._progress(f"using the hosts' swarm (manager {manager.site}); it is left as it was")
            return
        manager.client.swarm.init(advertise_addr=manager.address, listen_addr=host_port(manager.address, 2377),
                                  labels={SWARM_LABEL: self.testbed.run_id})
        self.testbed.swarm_member(manager.site, manager.client.info()["Swarm"]["NodeID"],
                                  manager.client.swarm.attrs["ID"])
        token = manager.client.swarm.attrs["JoinTokens"]["Worker"]
        workers = [e for e in self.engines.values() if e is not manager]
        self._progress(f"swarm manager {manager.site}; joining {', '.join(e.site for e in workers) or 'no one'}")

        def join(engine: Engine) -> None:
            engine.client.swarm.join(remote_addrs=[host_port(manager.address, 2377)], join_token=token,
                                     advertise_addr=engine.address, listen_addr=host_port(engine.address, 2377))
            self.testbed.swarm_member(engine.site, engine.client.info()["Swarm"]["NodeID"])

        with concurrent.futures.ThreadPoolExecutor(max(1, len(workers))) as pool:
            list(pool.map(join, workers))
        # Readiness waits scale with the WAN: gossip and raft cross it several times.
        timeout = 30 + self._worst_rtt_s() * 200
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            nodes = manager.client.nodes.list()
            # A node that has only just joined may not describe itself yet.
            states = {n.attrs.get("Description", {}).get("Hostname", n.id[:12]) + "@"
                      + n.attrs.get("Status", {}).get("Addr", "?"): n.attrs.get("Status", {}).get("State", "unknown")
                      for n in nodes}
            if len(nodes) == len(self.engines) and all(state == "ready" for state in states.values()):
                return
            time.sleep(0.2)
        logs = "\n".join(f"--- dockerd of {e.site}:\n{e.log_tail(8)}" for e in self.engines.values())
        raise EngineError(f"swarm did not converge within {timeout:.0f} s (nodes: {states}); this is the "
                          f"environment failing, not a measurement\n{logs}")

    timers = (
        ("swarm heartbeat", "5 s (a node missing it is marked down)", "docker swarm init --dispatcher-heartbeat "
                                                                      "default"),
        ("VXLAN forwarding", "peers' entries stay programmed while the swarm's network database keeps them",
         "moby libnetwork drivers/overlay (peerAdd/peerDelete)"),
        ("network database failure detection", "a probe every 1 s (0.5 s timeout, then 3 indirect probes through other "
         "nodes); a suspect declared dead 4 to 24 s later with 4 nodes; a dead node's entries are deleted",
         "hashicorp/memberlist DefaultLANConfig; moby libnetwork networkdb/event_delegate.go NotifyLeave"),
        ("network database resync", "reconnect to a failed node every 1 s; bulk sync of the network's tables "
         "every 30 s; a bulk sync waits 30 s for its answer, and its node's reconnects with it (moby/moby#47396)",
         "moby libnetwork networkdb/cluster.go retryInterval, bulkSyncNode; memberlist PushPullInterval"),
    )

    def control_state(self) -> dict[str, str]:
        """Every swarm node's state as the manager sees it ("node LJU": "ready" or "down"), and
        the peers each engine's network database lists on the overlay ("peers BRA": "AMS LJU
        MIL"): the entries its VXLAN forwarding is programmed from."""
        site_of = {e.address: e.site for e in self.engines.values()}
        try:
            nodes = self._manager().client.nodes.list()
            state = {f"node {site_of.get(n.attrs.get('Status', {}).get('Addr'), n.id[:12])}":
                     n.attrs.get("Status", {}).get("State", "unknown") for n in nodes}
        except Exception as e:  # noqa: BLE001  (the manager cut off is a state too)
            state = {"manager": f"unreachable ({type(e).__name__})"}
        for engine in self.engines.values():
            try:
                peers = engine.client.networks.get(self.network, verbose=True).attrs.get("Peers") or []
                seen = sorted(site_of.get(p.get("IP"), p.get("IP", "?")) for p in peers)
                state[f"peers {engine.site}"] = " ".join(s for s in seen if s != engine.site) or "none"
            except Exception as e:  # noqa: BLE001
                state[f"peers {engine.site}"] = f"unreadable ({type(e).__name__})"
        return state

    def control_logs(self) -> list[procs.Daemon]:
        """The engines' own logs: the swarm's gossip and network database live in dockerd."""
        return super().control_logs() + [e.daemon for e in self.engines.values() if e.daemon is not None]

    # dockerd logs this for every remote endpoint each time the network is inspected verbosely,
    # as control_state() does once a second.
    control_log_noise = ("Inconsistent driver and libnetwork state for endpoint",)

    def expected_outage_s(self, fault, logs: dict[str, list[str]] | None = None) -> tuple[float, float]:
        """A site cut off from every other longer than the network database takes to declare
        it dead (a probe a second, then at least 4 s of suspicion) loses its entries at its
        peers; after the heal they return with the next reconnect (tried every 1 s) and a bulk
        sync across the WAN, or 30 s later for each bulk sync a daemon logged as timed out
        (while one waits for its answer, its node's reconnects wait too: moby/moby#47396). A cut
        between two sites leaves the entries alone: the indirect probes through the others
        still reach both."""
        low, high = super().expected_outage_s(fault, logs)
        if fault.kind != "partition" or fault.seconds <= 5:
            return low, high
        stalls = sum(bool(BULK_SYNC_STALL.search(line)) for lines in (logs or {}).values() for line in lines)
        return low, high + 1.0 + BULK_SYNC_TIMEOUT_S * stalls

    def _network(self) -> None:
        options = {"encrypted": ""} if self.encrypted else {}
        network = self._manager().client.networks.create(self.network, driver="overlay", attachable=True,
                                                         labels={LABEL: self.testbed.run_id}, options=options)
        # The manager allocates the VNI after create returns: wait until the network shows it.
        deadline = time.monotonic() + 10
        while True:
            network.reload()
            self.vni = (network.attrs.get("Options") or {}).get("com.docker.network.driver.overlay.vxlanid_list")
            if self.vni or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self._progress(f"network {self.network} (VNI {self.vni})")

    def _datapath(self, src: str, dst: str) -> dict:
        return {
            "kind": "vxlan",
            "network": self.network,
            "vni": self.vni,
            "udp_port": VXLAN_PORT,
            "encrypted": self.encrypted,
        }

    def wire_counters(self) -> dict[str, int]:
        """VXLAN packets seen on the WAN, per link direction: proof the probe used the overlay."""
        return self.testbed.udp_packets(VXLAN_PORT)


class EncryptedLibnetworkOverlay(LibnetworkOverlay):
    name = "libnetwork-encrypted"
    label = "Docker overlay, encrypted"
    in_all = False
    description = "Docker swarm overlay network with --opt encrypted (IPsec ESP)"
    encrypted = True
    remote_unsupported = "its probe of the kernel's ESP runs in the emulated WAN, not on hosts"
