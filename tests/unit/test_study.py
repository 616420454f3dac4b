"""The study's report: the published table shipped with its citation, and the rules that
set our figures beside it."""

from __future__ import annotations

import re

from pytest_overlay.report import study

from .records import record


def test_reference_is_the_published_table_with_its_citation():
    reference = study.load_reference()
    assert "Hermans" in reference["citation"] and "de Niet" in reference["citation"]
    table = reference["docker_to_docker_latency"]
    assert list(table) == ["AMS-MIL", "AMS-LJU", "AMS-BRA", "MIL-LJU", "MIL-BRA", "BRA-LJU"]
    assert table["BRA-LJU"]["weave"] == [43.1, 59.5, 130.0] and table["AMS-MIL"]["flannel"] == [42.5, 42.9, 43.0]
    assert all(set(row) == {"libnetwork", "weave", "flannel"} for row in table.values())


def test_verdict_rule():
    assert study.verdict(36.5, 36.8, 0.0, 0.2).startswith("reproduces")
    assert study.verdict(42.9, 36.7, 6.4, 0.2) == "differs: mean differs by -6.2 ms, overhead differs by -6.2 ms"


def _latency(overlay, src, dst, mean):
    return record("latency", [mean - 0.05, mean, mean + 0.05] * 40, overlay=overlay, src=src, dst=dst)


def test_rows_set_published_beside_measured():
    reference = {"docker_to_docker_latency": {"AMS-MIL": {"libnetwork": [36.3, 36.5, 37.0],
                                                          "weave": [36.2, 36.5, 37.0],
                                                          "flannel": [42.5, 42.9, 43.0]}}}
    records = [_latency("host", "AMS", "MIL", 36.5), _latency("libnetwork", "AMS", "MIL", 36.8),
               _latency("weave", "AMS", "MIL", 37.5), _latency("flannel", "AMS", "MIL", 36.9)]
    rows = {row[1]: row for row in study.latency_rows(reference, records)}
    assert rows["libnetwork"][11] == study.BY_CONSTRUCTION  # geant.yaml's RTTs are its published means
    assert rows["weave"][9] == "+0.70" and rows["weave"][11] == "differs: overhead differs by +0.7 ms"
    assert rows["flannel"][8] == "+6.4" and rows["flannel"][11].startswith("differs: mean differs by -6.0 ms")
    assert rows["weave"][10].startswith("+1.00 ±")


def test_significance_per_overlay():
    records = [_latency("host", "A", "B", 20.0), _latency("calico", "A", "B", 20.0),
               _latency("weave", "A", "B", 21.0),
               record("tcp_throughput", [950.0, 950.0], src="A", dst="B", total=950.0),
               record("tcp_throughput", [95.0, 95.0], overlay="weave", src="A", dst="B", total=95.0)]
    rows = {row[0]: row for row in study.significance_rows(records)}
    assert rows["calico"][3] == "0 of 1" and rows["weave"][3] == "1 of 1"
    assert rows["weave"][4] == "0.10 to 0.10" and rows["calico"][4] == "-"


def test_an_overhead_is_never_taken_against_an_invalid_underlay():
    host = _latency("host", "A", "B", 21.0)
    host.valid, host.invalid_reasons = False, ["emulator touched 40 of 250 round trips"]
    records = [host, _latency("calico", "A", "B", 20.0)]
    assert study.significance_rows(records)[0][2] == "-"  # no negative overhead from a bad baseline
    reference = {"docker_to_docker_latency": {"A-B": {o: [20, 20, 20] for o in ("libnetwork", "weave", "flannel")}}}
    row = study.latency_rows(reference, [host, _latency("libnetwork", "A", "B", 20.0)])[0]
    assert row[10] == "unknown: underlay INVALID"


def test_published_against_measured_is_drawn(tmp_path):
    from pytest_overlay.report import plots

    reference = study.load_reference()["docker_to_docker_latency"]
    records = [_latency(overlay, *circuit.split("-"), means[1] + 0.3)
               for circuit, row in reference.items() for overlay, means in row.items()]
    path = tmp_path / "published.png"
    assert plots.published_vs_measured(reference, records, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert not plots.published_vs_measured(reference, [], tmp_path / "none.png")


def _cut(overlay: str, fault: str, outage_ms: float, detour: list[float] | None = None, path: str = "") -> list:
    out = [record("outage_ms", [outage_ms], overlay=overlay, src="BRA", dst="LJU", fault=fault,
                  extra={"detour_path": path})]
    if detour:
        out.append(record("detour_rtt", detour, overlay=overlay, src="BRA", dst="LJU", fault=fault))
    return out


def test_the_cut_says_whether_a_relay_can_make_weaves_row():
    reference = study.load_reference()
    none = _cut("weave", "cut-BRA-LJU", 20_900) + _cut("libnetwork", "cut-BRA-LJU", 20_020)
    assert "none relayed through a third site" in study.cut_answer(reference, none)
    via_mil = none + _cut("weave", study.LONG_CUT, 61_000, [75.0, 76.0, 77.0] * 30, "BRA->MIL->LJU")
    answer = study.cut_answer(reference, via_mil)
    # (59.5 - 47.4) / (76 - 47.4): 42 % of round trips relayed would make the published mean ...
    assert "42 % of the study's round trips would have had to take that path" in answer
    assert "| cut-90s-BRA-LJU | weave      | 61.00" in answer and "BRA->MIL->LJU" in answer
    # ... but a relay never lowers the minimum: 4.0 ms under libnetwork's says another path.
    assert "4.0 ms under libnetwork's" in answer
    via_ams = none + _cut("weave", study.LONG_CUT, 61_000, [48.0, 48.5, 49.0] * 30, "BRA->AMS->LJU")
    assert "no share of relayed round trips would suffice" in study.cut_answer(reference, via_ams)


def test_the_future_work_part_answers_with_the_rrul_and_cpu_tables(tmp_path):
    import json
    from pathlib import Path

    loaded = json.loads((Path(__file__).parent / "data" / "load-records.json").read_text())
    budgeted = []
    for overlay, cpu, mbit in (("weave", None, 110.0), ("weave", 0.1, 14.0), ("libnetwork", None, 930.0),
                               ("libnetwork", 0.1, 925.0)):
        r = record("tcp_throughput", [mbit] * 10, overlay=overlay, src="AMS", dst="MIL", cpu=cpu, total=mbit,
                   expected={"rtt_ms": 36.8, "rate_mbit": 1000.0}, extra={"cpu_used": {"AMS": {
                       "cores_used": 0.1, "throttled_share": 0.5}}})
        r.verdict = "pass"
        budgeted.append(r.to_json())
    (tmp_path / "stress.json").write_text(json.dumps({"version": 6, "results": loaded + budgeted}))
    parts = [study.Part("x", [], 1.0, "x.json")]
    study.write_report(tmp_path, parts, 60.0)
    text = (tmp_path / "report.md").read_text()
    section = text.split("## Future work: a shared host, and CPU capping")[1]
    assert "Latency under load on AMS-MIL" in section and "Added latency under load beyond the links' buffers" in section
    assert "did not: weave 13 % of its TCP goodput" in section and "libnetwork 99 % of its TCP goodput" in section
    page = (tmp_path / "index.html").read_text()
    assert "<p>At their smallest budget, kept throughput" in page  # the answer a paragraph, not a table row


def test_only_the_parts_asked_for_run_and_the_report_says_which(tmp_path):
    """`study --parts 2,3`: parts 2 and 3 run (here `true` stands in for pytest), the others
    do not, and the report's first line says which ran and which results are older."""
    (tmp_path / "ptp.json").write_text('{"schema": "pytest-overlay/results", "version": 6, "results": []}')
    assert study.Study(tmp_path, python="true").run({2, 3}) == 0
    first = (tmp_path / "report.md").read_text().split("\n\n")[2]
    assert re.search(r"part 1: results of an earlier run; part 2: \d+ s; part 3: \d+ s; part 4: not run; "
                     r"part 5: not run; part 6: not run; part 7: not run; part 8: not run\.", first), first


def test_the_confidence_section_names_its_units_and_renders_as_a_list():
    from pytest_overlay.report import page
    from pytest_overlay.results import Stats

    rows = []
    for src, values in (("A", [956.0, 957.0, 955.0, 956.5, 956.2, 955.8]), ("C", [880.0, 940.0, 820.0, 900.0, 860.0,
                                                                                  910.0])):
        r = record("tcp_throughput", values, src=src, total=sum(values) / len(values))
        r.stats = Stats.of(values, batch=2)
        rows.append(r)
    text = study.confidence(rows)
    assert "- TCP total: ±" in text and "from batches of 2 intervals, n = 3 per row, 2 rows" in text
    assert "% of the value" in text
    html = "".join(page.markdown("## Confidence\n\n" + text))
    assert "<h2>Confidence</h2><ul><li>TCP total: ±" in html and "<p>" not in html


def test_the_what_breaks_part_sets_each_overlay_against_each_kind_of_path(tmp_path):
    """Part 8's records (the pmtu triangle, measured here) make the "What breaks" section."""
    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).parent / "data" / "pmtu-records.json", tmp_path / "pmtu.json")
    study.write_report(tmp_path, [study.Part("x", [], 1.0, "x.json")], 60.0)
    section = (tmp_path / "report.md").read_text().split("## Beyond the study: what breaks")[1]
    assert "| Overlay    | MTU 1400 with ICMP   | MTU 1400 with ICMP, reorder 1 %   | MTU 1400 without ICMP   |" in section
    assert "| wireguard  | slowed (1420 B)      | slowed (1420 B)                   | black hole (1328 B)     |" in section
    assert "| libnetwork | full speed (1350 B)  | full speed (1350 B)               | INVALID                 |" in section
