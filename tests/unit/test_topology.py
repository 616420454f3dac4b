"""Topology files: the bundled ones load, and every kind of bad input is refused with its
file, line and field, before anything is created."""

from __future__ import annotations

import textwrap

import pytest

from pytest_overlay import kinds
from pytest_overlay.inputs import topology
from pytest_overlay.inputs.topology import Circuit, InputError


def write(tmp_path, text: str):
    path = tmp_path / "t.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """\
name: t
sites:
  A: {location: here}
  B: {location: there}
  C: {}
links:
  - {between: [A, B], rtt_ms: 20, jitter_ms: 0.5, loss_pct: 1, rate_mbit: 100}
  - {from: B, to: C, delay_ms: 5}
  - {from: C, to: B, delay_ms: 7, loss_pct: 2}
"""


def test_bundled_topologies_load():
    geant = topology.load("geant")
    assert sorted(geant.sites) == ["AMS", "BRA", "LJU", "MIL"]
    assert {c.id: geant.expected(c)["rtt_ms"] for c in geant.circuits} == {
        "AMS-MIL": 36.5, "AMS-LJU": 30.3, "AMS-BRA": 17.7, "MIL-LJU": 62.1, "MIL-BRA": 13.0, "BRA-LJU": 47.4}
    star = topology.load("geant-star")
    assert star.hub == "BRA" and [c.id for c in star.circuits] == ["BRA-AMS", "BRA-LJU", "BRA-MIL"]
    assert len(topology.load("local").circuits) == 1


def test_symmetric_and_directed_links(tmp_path):
    topo = topology.load(write(tmp_path, GOOD))
    ab = topo.link_between("A", "B")
    assert ab.forward.delay_ms == ab.reverse.delay_ms == 10
    assert ab.forward.loss_pct == 1 and ab.reverse.rate_mbit == 100
    bc = topo.link_between("C", "B")
    assert (bc.forward.delay_ms, bc.reverse.delay_ms) == (5, 7)
    assert [c.id for c in topo.circuits] == ["A-B", "B-C"]


def test_unlinked_circuit_routes_over_the_fewest_hops(tmp_path):
    topo = topology.load(write(tmp_path, GOOD + "circuits: [[A, C]]\n"))
    assert topo.path_between("A", "C") == ["A", "B", "C"]
    expected = topo.expected(Circuit("A", "C"))
    assert expected["rtt_ms"] == 10 + 5 + 7 + 10
    assert expected["rate_mbit"] == 100
    assert expected["loss_pct"] == pytest.approx(1.0)  # forward: A->B loses 1 %, B->C none


BAD = [
    ("malformed", "sites: {A: {}\nlinks: []\n", 2, "", "malformed YAML"),
    ("nested between", GOOD.replace("between: [A, B]", "between: [[A], B]"), 7, "links[0].between", "unknown site ['A']"),
    ("list as hub", GOOD + "hub: [A]\n", 10, "hub", "unknown site ['A']"),
    ("nested circuit", GOOD + "circuits: [[[A], B]]\n", 10, "circuits[0]", "unknown site ['A']"),
    ("huge number", GOOD.replace("rtt_ms: 20", "rtt_ms: " + "9" * 400), 7, "links[0].rtt_ms", "400 digits"),
    ("unknown top key", GOOD + "colour: blue\n", 10, "colour", "unknown key"),
    ("unknown link key", GOOD.replace("rate_mbit: 100", "speed: 100"), 7, "links[0].speed", "unknown key"),
    ("unknown site", GOOD.replace("between: [A, B]", "between: [A, Z]"), 7, "links[0].between", "unknown site 'Z'"),
    ("negative delay", GOOD.replace("delay_ms: 5", "delay_ms: -5"), 8, "links[1].delay_ms", "must be >= 0"),
    ("non-numeric rtt", GOOD.replace("rtt_ms: 20", "rtt_ms: fast"), 7, "links[0].rtt_ms", "must be a finite number"),
    ("infinite rate", GOOD.replace("rate_mbit: 100", "rate_mbit: .inf"), 7, "links[0].rate_mbit",
     "must be a finite number, got inf"),
    ("list for a number", GOOD.replace("rtt_ms: 20", "rtt_ms: [10, 20]"), 7, "links[0].rtt_ms",
     "must be a finite number, got [10, 20]"),
    ("site named like the testbed's own", GOOD.replace("  C: {}", "  wan: {}").replace("C", "wan"), 5, "sites.wan",
     "'wan' is the name of the testbed's own namespace"),
    ("control character in a name", GOOD.replace("  C: {}", '  "C\\t": {}'), 5, "sites.C\\t",
     "a site name is a letter then up to 11"),
    ("site no link reaches", GOOD.replace("  C: {}", "  C: {}\n  D: {}"), 6, "sites.D", "no link reaches this site"),
    ("link from a site to itself", GOOD.replace("  C: {}", "  C: {}\n  D: {}") + "  - {between: [D, D], rtt_ms: 1}\n",
     11, "links[3].between", "a link joins two different sites"),
    ("alias", GOOD.replace("rtt_ms: 20,", "rtt_ms: &r 20,") + "  - {between: [A, C], rtt_ms: *r}\n", 10, "",
     "YAML alias *r is not allowed here"),
    ("duplicate link", GOOD + "  - {between: [B, A], rtt_ms: 3}\n", 10, "links[3]", "duplicate link"),
    ("missing reverse", GOOD.replace("  - {from: C, to: B, delay_ms: 7, loss_pct: 2}\n", ""), 8, "links",
     "no reverse direction"),
    ("loss over 100", GOOD.replace("loss_pct: 1,", "loss_pct: 101,"), 7, "links[0].loss_pct", "<= 100"),
    ("duplicate key", GOOD.replace("  C: {}\n", "  C: {}\n  C: {}\n"), 6, "C", "duplicate key"),
    ("circuit to unknown site", GOOD + "circuits: [[A, Q]]\n", 10, "circuits[0]", "unknown site 'Q'"),
    ("bad hub", GOOD + "hub: Q\n", 10, "hub", "unknown site"),
    ("bad kv site", GOOD + "kv: Q\n", 10, "kv", "unknown site 'Q'"),
    ("nesting deeper than any file of ours", GOOD + "description: " + "[" * 5000 + "]" * 5000 + "\n", 10, "",
     "nested deeper than 32 levels"),
    ("a rate no link has", GOOD.replace("rate_mbit: 100", "rate_mbit: 1000000000"), 7, "links[0].rate_mbit",
     "<= 400000"),
    ("a flap of days", GOOD + "faults:\n  f: {kind: flap, link: [A, B], seconds: 3000, up_s: 3000, times: 100}\n",
     11, "faults.f", "lasts 597000 s in all; at most 3600 s"),
    ("more scenarios than tests anyone runs", GOOD + "faults:\n" + "".join(
        f"  f{i}: {{kind: cut, link: [A, B]}}\n" for i in range(65)), 10, "faults", "65 scenarios; at most 64"),
    ("more buffer sizes than a study sweeps", GOOD + "load: {queue_ms: [" + ", ".join(map(str, range(1, 18))) + "]}\n",
     10, "load.queue_ms", "17 buffer sizes; at most 16"),
]


@pytest.mark.parametrize("text, line, field, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_topology_names_file_line_and_field(tmp_path, text, line, field, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as error:
        topology.load(path)
    assert (error.value.path, error.value.line, error.value.field) == (str(path), line, field)
    assert message in error.value.message
    assert str(error.value).startswith(f"{path}:{line}: ")


def test_a_file_larger_than_any_topology_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(GOOD + "# " + "x" * (4 << 20) + "\n")
    with pytest.raises(InputError, match=r"big.yaml: larger than 4 MiB: not a file of ours"):
        topology.load(path)


def test_missing_topology_lists_bundled_ones():
    with pytest.raises(InputError, match="bundled topologies: geant, geant-star, geant.dsl, local, pmtu, pmtu-ipv6"):
        topology.load("atlantis")


def test_key_value_store_site(tmp_path):
    assert topology.load(write(tmp_path, GOOD)).kv_site == "A"
    assert topology.load(write(tmp_path, GOOD + "manager: B\n")).kv_site == "B"
    assert topology.load(write(tmp_path, GOOD + "manager: B\nkv: C\n")).kv_site == "C"


def test_not_utf8_is_refused_with_its_line(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_bytes(GOOD.encode() + b"# caf\xe9\n")
    with pytest.raises(InputError) as error:
        topology.load(path)
    assert (error.value.line, error.value.message) == (10, "not UTF-8 text (byte 240 is 0xe9)")


def test_links_form_one_network(tmp_path):
    text = ("name: t\nsites: {A: {}, B: {}, C: {}, D: {}}\nlinks:\n"
            "  - {between: [A, B], rtt_ms: 1}\n  - {between: [C, D], rtt_ms: 1}\n")
    with pytest.raises(InputError, match="sites C, D cannot be reached from A: the links form separate networks"):
        topology.load(write(tmp_path, text))


def test_link_count_the_delay_line_can_carry(tmp_path):
    names = [f"S{i}" for i in range(65)]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]

    def text(count: int) -> str:
        return ("name: big\nsites:\n" + "".join(f"  {n}: {{}}\n" for n in names) + "links:\n"
                + "".join(f"  - {{between: [{a}, {b}], rtt_ms: 1}}\n" for a, b in pairs[:count]))

    assert len(topology.load(write(tmp_path, text(topology.MAX_LINKS))).links) == 2048  # past the old 255
    with pytest.raises(InputError, match="2049 links; at most 2048"):
        topology.load(write(tmp_path, text(topology.MAX_LINKS + 1)))


def test_routes_of_a_long_chain_cost_one_search_per_source():
    sites = {f"S{i}": {} for i in range(200)}
    chain = topology.parse({"name": "chain", "sites": sites,
                            "links": [{"between": [f"S{i}", f"S{i + 1}"], "rtt_ms": 1} for i in range(199)]}, "c.yaml")
    assert chain.path_between("S3", "S0") == ["S3", "S2", "S1", "S0"]
    chain._routes.clear()
    assert all(len(chain.path_between("S0", f"S{i}")) == i + 1 for i in range(200))
    assert list(chain._routes["trees"]) == ["S0"]  # 200 destinations from one search


def test_a_shorter_detour_loses_to_the_direct_link_and_a_tie_in_hops_to_the_lower_delay():
    topo = topology.parse({"name": "t", "sites": {"A": {}, "B": {}, "C": {}, "D": {}}, "links": [
        {"between": ["A", "B"], "rtt_ms": 50}, {"between": ["A", "C"], "rtt_ms": 2}, {"between": ["C", "B"], "rtt_ms": 2},
        {"between": ["A", "D"], "rtt_ms": 9}, {"between": ["D", "C"], "rtt_ms": 1}]}, "t.yaml")
    assert topo.path_between("A", "B") == ["A", "B"]
    assert topo.path_between("D", "B") == ["D", "C", "B"]  # two hops either way: via C's 0.5 + 1 ms one-way
    assert topo.link_between("B", "A") is topo.links[0] and topo.link_between("B", "D") is None


REMOTE = """\
name: real
sites:
  A:
    host: {ssh: ops@192.0.2.1}
  B:
    host:
      ssh: ops@192.0.2.2:2222
      docker: tcp://192.0.2.2:2376
      tls: {ca: ca.pem, cert: cert.pem, key: key.pem}
links:
  - {between: [A, B], rtt_ms: 20}
"""

BAD_HOSTS = [
    ("docker without tls", REMOTE.replace("      tls: {ca: ca.pem, cert: cert.pem, key: key.pem}\n", ""), 8,
     "sites.B.host.tls", "plain TCP is never used"),
    ("tls file missing", REMOTE.replace("key: key.pem", "key: nokey.pem"), 9, "sites.B.host.tls.key", "no such file"),
    ("tls key missing", REMOTE.replace(", key: key.pem", ""), 9, "sites.B.host.tls.key", "missing: the path of a PEM"),
    ("address not an IP", REMOTE.replace("{ssh: ops@192.0.2.1}", "{ssh: ops@192.0.2.1, address: far}"), 4,
     "sites.A.host.address", "must be an IP address"),
    ("identity missing", REMOTE.replace("{ssh: ops@192.0.2.1}", "{ssh: ops@192.0.2.1, identity: id_none}"), 4,
     "sites.A.host.identity", "no such file"),
    ("bad ssh target", REMOTE.replace("ops@192.0.2.1", "192.0.2.1"), 4, "sites.A.host.ssh", "must be user@address[:port]"),
    ("ssh port out of range", REMOTE.replace(":2222", ":70000"), 7, "sites.B.host.ssh", "port must be 1..65535"),
    ("docker over unix", REMOTE.replace("tcp://192.0.2.2:2376", "unix:///run/docker.sock"), 8, "sites.B.host.docker",
     "must be tcp://address:2376"),
    ("neither ssh nor docker", REMOTE.replace("{ssh: ops@192.0.2.1}", "{interface: eth0}"), 4, "sites.A.host",
     "give ssh: user@address[:port] or docker"),
    ("emulate without interface", REMOTE.replace("{ssh: ops@192.0.2.1}", "{ssh: ops@192.0.2.1, emulate: true}"), 4,
     "sites.A.host.interface", "name it"),
    ("emulate not a bool", REMOTE.replace("{ssh: ops@192.0.2.1}", "{ssh: ops@192.0.2.1, emulate: yes please}"), 4,
     "sites.A.host.emulate", "must be true or false"),
    ("unknown host key", REMOTE.replace("{ssh: ops@192.0.2.1}", "{ssh: ops@192.0.2.1, password: x}"), 4,
     "sites.A.host.password", "unknown key"),
    ("one site embedded", REMOTE.replace("    host: {ssh: ops@192.0.2.1}\n", "    location: here\n"), 3,
     "sites.A.host", "every site must"),
    ("a link buffer on real hosts", REMOTE.replace("rtt_ms: 20}", "rtt_ms: 20, rate_mbit: 100, queue_ms: 5}"), 11,
     "links", "across real hosts the links' buffers are the hosts' own"),
]


@pytest.mark.parametrize("text, line, field, message", [b[1:] for b in BAD_HOSTS], ids=[b[0] for b in BAD_HOSTS])
def test_bad_host_entry_names_file_line_and_field(tmp_path, text, line, field, message):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    path = write(tmp_path, text)
    with pytest.raises(InputError) as error:
        topology.load(path)
    assert (error.value.line, error.value.field) == (line, field), error.value
    assert message in error.value.message


def test_host_entries_resolve_addresses_and_certificates(tmp_path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    topo = topology.load(write(tmp_path, REMOTE))
    a, b = topo.sites["A"].host, topo.sites["B"].host
    assert (a.address, a.ssh, a.docker, a.tls) == ("192.0.2.1", "ops@192.0.2.1", None, None)
    topo = topology.load(write(tmp_path, REMOTE.replace("{ssh: ops@192.0.2.1}", "{ssh: ops@192.0.2.1, address: 198.18.0.1, identity: key.pem}")))
    assert (topo.sites["A"].host.address, topo.sites["A"].host.identity) == ("198.18.0.1", str(tmp_path / "key.pem"))
    assert (b.address, b.docker) == ("192.0.2.2", "tcp://192.0.2.2:2376")
    assert b.tls == {k: str(tmp_path / f"{k}.pem") for k in ("ca", "cert", "key")}


def test_overlay_ranges_default_and_move(tmp_path):
    families = kinds.families()
    assert set(families) == {kinds.get(n).family.name for n in kinds.names() if kinds.get(n).family} != set()
    plain = topology.load(write(tmp_path, GOOD))
    assert plain.ranges == {} and [plain.range_of(f) for f in families.values()] == [f.default for f in families.values()]
    moved = topology.load(write(tmp_path, GOOD + "ranges: {calico: 10.77.0.0/24, weave: 172.30.0.0/16}\n"))
    assert moved.ranges == {"calico": "10.77.0.0/24", "weave": "172.30.0.0/16"}
    assert moved.range_of(families["calico"]) == "10.77.0.0/24"
    assert moved.range_of(families["flannel"]) == families["flannel"].default


@pytest.mark.parametrize("ranges, field, message", [
    ("{cilium: 10.0.0.0/16}", "ranges.cilium", "unknown key"),
    ("{flannel: 10.40.0.1/16}", "ranges.flannel", "has host bits set"),
    ("{flannel: 10.40.0.0/23}", "ranges.flannel", "10.40.0.0/23 holds 2 /24 block(s); 3 sites need one each"),
    ("{flannel: 10.40.0.0/25}", "ranges.flannel", "10.40.0.0/25 holds 0 /24 block(s); 3 sites need one each"),
    ("{calico: 10.48.0.0/26}", "ranges.calico", "10.48.0.0/26 holds 1 /26 block(s); 3 sites need one each"),
    ("{weave: 198.18.0.0/16}", "ranges.weave", "overlaps the testbed's own 198.18.0.0/15"),
    ("{weave: 12}", "ranges.weave", "must be an IPv4 network such as 10.32.0.0/12, got 12"),
], ids=["unknown", "host-bits", "flannel-small", "flannel-none", "calico-small", "testbed", "not-a-network"])
def test_bad_overlay_range_names_its_line(tmp_path, ranges, field, message):
    path = write(tmp_path, GOOD + f"ranges: {ranges}\n")
    with pytest.raises(InputError) as error:
        topology.load(path)
    assert (error.value.line, error.value.field) == (10, field)
    assert message in error.value.message


def test_a_host_given_by_name_is_resolved_when_the_topology_is_loaded(tmp_path):
    """Rules, routes and the controller's own path are compared by address: a name is resolved
    at load (localhost, from /etc/hosts), and one that does not resolve is refused there."""
    path = tmp_path / "t.yaml"
    path.write_text("sites:\n  A: {host: {ssh: root@localhost}}\n  B: {host: {ssh: root@192.0.2.2}}\n"
                    "links: [{between: [A, B], rtt_ms: 10}]\n")
    assert topology.load(path).sites["A"].host.address == "127.0.0.1"
    path.write_text(path.read_text().replace("root@localhost", "root@no-such-host.invalid"))
    with pytest.raises(InputError, match=r"t.yaml:2: sites.A.host.ssh: host name 'no-such-host.invalid' does not "
                                         r"resolve here \(.*\); give its IP address"):
        topology.load(path)
