"""Calico's BIRD takes from its peers the pool's blocks and nothing else: a real BIRD with the
site's configuration, peered with a real BIRD that announces a default route, a foreign
prefix, the pool as a whole and one block; only the block reaches the site's kernel."""

from __future__ import annotations

import time
import uuid

import pytest

from pytest_overlay import procs
from pytest_overlay.overlays import calico

pytestmark = pytest.mark.skipif(procs.missing({"bird": "bird2"}) != [], reason="bird (bird2) not installed")

SITE, ROGUE = "198.18.200.1", "198.18.200.2"
ANNOUNCED = ["0.0.0.0/0", "10.99.0.0/24", str(calico.POOL), str(calico.block(1))]
ROGUE_CONFIG = f"""\
router id {ROGUE};
protocol device {{ scan time 10; }}
protocol static rogue {{
  ipv4;
{''.join(f'  route {prefix} blackhole;{chr(10)}' for prefix in ANNOUNCED)}}}
protocol bgp site {{
  local {ROGUE} as {calico.AS_NUMBER};
  neighbor {SITE} as {calico.AS_NUMBER};
  multihop;
  connect retry time 1;
  ipv4 {{ import none; export all; }};
}}
"""


@pytest.fixture
def peered(tmp_path):
    """Name: peered. Scope: function. Two namespaces one veth apart, the site's BIRD in one
    (calico.bird_config) and a rogue BIRD in the other; yields (site namespace, site's
    control socket). Daemons ended and namespaces deleted afterwards."""
    tag = uuid.uuid4().hex[:6]
    names = {"site": f"ovl{tag}-bgp-site", "rogue": f"ovl{tag}-bgp-rogue"}
    daemons = []
    try:
        for ns in names.values():
            procs.run(["ip", "netns", "add", ns]).check()
        procs.run(["ip", "link", "add", "bgp0", "netns", names["site"], "type", "veth", "peer", "name", "bgp0",
                   "netns", names["rogue"]]).check()
        for role, address in (("site", SITE), ("rogue", ROGUE)):
            for command in (["ip", "addr", "add", f"{address}/32", "dev", "bgp0"], ["ip", "link", "set", "bgp0", "up"],
                            ["ip", "route", "add", "198.18.200.0/24", "dev", "bgp0", "proto", "static"]):
                procs.run(command, names[role]).check()
        configs = {"site": calico.bird_config(SITE, str(calico.block(0)), {"rogue": ROGUE}), "rogue": ROGUE_CONFIG}
        for role, ns in names.items():
            conf, control = tmp_path / f"{role}.conf", tmp_path / f"{role}.ctl"
            conf.write_text(configs[role])
            daemons.append(procs.start(f"bird-{role}", ["bird", "-f", "-c", str(conf), "-s", str(control)],
                                       tmp_path / f"{role}.log", ns))
        yield names["site"], tmp_path / "site.ctl"
    finally:
        for daemon in daemons:
            daemon.stop()
        for ns in names.values():
            procs.run(["ip", "netns", "del", ns])


def test_only_the_pools_blocks_are_installed(peered, clean_machine):
    site, control = peered
    deadline = time.monotonic() + 30
    learned = ""
    while time.monotonic() < deadline and str(calico.block(1)) not in learned:
        time.sleep(0.5)
        learned = procs.run(["ip", "-4", "route", "show", "proto", "bird"], site).stdout
    assert str(calico.block(1)) in learned, learned
    session = calico.bird_query(str(control), "show protocols all peer_rogue")
    assert "Established" in session, session
    # Every announcement arrived (the rogue sent them in one update), and one was kept.
    assert "1 imported" in session, session
    routes = procs.run(["ip", "-4", "route", "show", "table", "all"], site).stdout
    for refused in ("default", "10.99.0.0/24", f"{calico.POOL} "):
        assert refused not in routes, routes
