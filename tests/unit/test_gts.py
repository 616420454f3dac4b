"""The GÉANT Testbeds Service's testbed language, in and out: a GTS file loads as a topology
(sites at their locations, links between hosts, RTTs from the study's measurements or the
great-circle distance, each saying which); what the importer does not support is refused with
the file, the line and what to do; every bundled topology goes out as a GTS file and comes
back the same; and 600 seeded mutations of a GTS file never crash the loader."""

from __future__ import annotations

import random
import textwrap

import pytest

from pytest_overlay.inputs import gts, topology
from pytest_overlay.inputs.topology import InputError

# A line of three GÉANT locations, written in the form of GTS's own examples.
LINE = textwrap.dedent("""\
    type Line {
    \tdescription = "three locations in a line"
    \thost {
    \t\tid="h1"
    \t\tlocation="BRA"
    \t\tport { id="port1" }
    \t}
    \thost { id="h2" location="PAR" port { id="port1" } port { id="port2" } }
    \thost { id="h3" location="MAD" port { id="port1" } }
    \tlink { id="l1" port { id="src" } port { id="dst" } }
    \tlink { id="l2" port { id="src" } port { id="dst" } }
    \tadjacency h1.port1, l1.src
    \tadjacency h2.port1, l1.dst
    \tadjacency h2.port2, l2.src
    \tadjacency h3.port1, l2.dst
    }
    """)


def write(tmp_path, text: str, name: str = "line.dsl"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_gts_line_loads_with_rtts_that_say_where_they_came_from(tmp_path):
    topo = topology.load(write(tmp_path, LINE))
    assert sorted(topo.sites) == ["h1", "h2", "h3"] and topo.sites["h2"].location == "PAR"
    assert [(link.a, link.b) for link in topo.links] == [("h1", "h2"), ("h2", "h3")]
    by_pair = {(link.a, link.b): link.rtt_ms for link in topo.links}
    # Bratislava-Paris 1 090 km, Paris-Madrid 1 053 km: light in fibre, plus 1 ms each
    assert by_pair[("h1", "h2")] == pytest.approx(1 + 2 * 1090 / 200, abs=0.3)
    assert by_pair[("h2", "h3")] == pytest.approx(1 + 2 * 1053 / 200, abs=0.3)
    expected = topo.expected(topo.circuits[0])
    assert expected["rtt_source"] == {"h1-h2": "great-circle distance (2/3 c, plus 1 ms for the equipment)"}
    # h1 to h3 is routed through h2: both links' RTTs, each named
    assert topo.expected(topology.Circuit("h1", "h3"))["rtt_ms"] == pytest.approx(sum(by_pair.values()))


def test_the_bundled_study_testbed_is_geant_yaml_in_gts_form():
    yaml_topo, dsl = topology.load("geant"), topology.load("geant.dsl")
    assert gts.same_links(yaml_topo, dsl, within_ms=0.1) is True
    assert sorted(c.id for c in yaml_topo.circuits) == sorted(c.id for c in dsl.circuits)
    assert set(dsl.rtt_sources.values()) == {"the study's measurement (libnetwork mean)"}
    assert "geant.dsl" in topology.available()


@pytest.mark.parametrize("name", sorted(topology.available()))
def test_every_bundled_topology_goes_out_as_gts_and_comes_back_the_same(tmp_path, name):
    source = topology.load(name)
    text = gts.write(source, tmp_path / "out.dsl", "test")
    back = topology.load(tmp_path / "out.dsl")
    assert gts.same_links(source, back) is True, text
    assert text.count("adjacency") == 2 * len(source.links)


def test_a_companion_yaml_adds_what_gts_cannot_say(tmp_path):
    write(tmp_path, LINE)
    companion = tmp_path / "line.yaml"
    companion.write_text(textwrap.dedent("""\
        gts: line.dsl
        rtts: {h1-h2: 25.0}
        links:
          - {between: [h2, h3], rate_mbit: 500}
        faults:
          cut-l2: {kind: cut, link: [h2, h3], seconds: 5}
        """))
    topo = topology.load(companion)
    link = {(link.a, link.b): link for link in topo.links}
    assert link[("h1", "h2")].rtt_ms == 25.0 and topo.rtt_sources["h1-h2"] == "given"
    assert link[("h2", "h3")].forward.rate_mbit == 500 and "cut-l2" in topo.faults
    companion.write_text("gts: line.dsl\nsites:\n  h9: {location: Paris}\n")
    with pytest.raises(InputError, match=r"line.yaml:3: sites.h9: line.dsl declares no host 'h9'"):
        topology.load(companion)


@pytest.mark.parametrize("change, line, message", [
    (("\thost { id=\"h3\"", "\tfor (i in 1..3) { }\n\thost { id=\"h3\""), 9, "a loop is Groovy"),
    (("type Line {", "type Line(nVM=1) {"), 1, "parameters, calls and lists are Groovy code"),
    (("\tlink { id=\"l2\"", "\tswitch { id=\"s1\" }\n\tlink { id=\"l2\""), 11, "an OpenFlow switch"),
    (('location="MAD"', 'location="XYZ"'), 9, "unknown location 'XYZ'"),
    (("\tadjacency h3.port1, l2.dst\n", "\tadjacency h3.port1, l2.dst\n\tadjacency h1.port1, l2.dst\n"), 16,
     r"l2.dst is joined twice \(line 15\)"),
    (("\tadjacency h3.port1, l2.dst\n", ""), 11, "link 'l2' has one end joined to a host"),
    (('port { id="src" } port { id="dst" } }\n\tlink { id="l2"', 'port { id="src" } }\n\tlink { id="l2"'), 10,
     r"link 'l1' has 1 port\(s\): a link has two ends"),
    (("\tadjacency h1.port1, l1.src", "\tadjacency h1.port7, l1.src"), 12, "h1 has no port 'port7'"),
    (("\n}\n", "\n"), 1, "type Line is not closed"),
])
def test_what_the_importer_does_not_read_is_refused_with_file_and_line(tmp_path, change, line, message):
    assert change[0] in LINE
    path = write(tmp_path, LINE.replace(*change))
    with pytest.raises(InputError, match=message) as refused:
        topology.load(path)
    assert f"line.dsl:{line}:" in str(refused.value), str(refused.value)


def test_600_seeded_mutations_of_a_gts_file_load_or_are_refused_with_file_and_line(tmp_path):
    """Characters and tokens dropped, doubled, swapped or replaced: each mutant loads, or is
    refused with the tool's own InputError naming the file (and a line wherever one exists)."""
    rng = random.Random(37)
    pieces = ["{", "}", "=", ",", ".", '"', "(", ")", "for", "def", "host", "link", "port", "adjacency", "id",
              "location", "\n", "\t", "é", "\x00", "1e999", "//", "/*", "*/", '"AMS"', '"h1"', "l1.src"]
    path = tmp_path / "mutant.dsl"
    loaded = refused = 0
    for _ in range(600):
        text = list(LINE)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text))
            action = rng.randrange(4)
            if action == 0:
                del text[at]
            elif action == 1:
                text.insert(at, rng.choice(pieces))
            elif action == 2:
                other = rng.randrange(len(text))
                text[at], text[other] = text[other], text[at]
            else:
                text[at] = rng.choice(pieces)
        path.write_text("".join(text))
        try:
            topology.load(path)
            loaded += 1
        except InputError as e:
            assert "mutant.dsl" in str(e)
            refused += 1
    assert loaded + refused == 600 and refused > 300 and loaded > 0
