"""The report as a person sees it: the generated index.html (a run's and the study's) opened in
a real browser, headless Debian chromium driven by selenium. Every image loaded, every table
has rows, and no text says NaN or None."""

from __future__ import annotations

import shutil

import pytest

from pytest_overlay import report
from pytest_overlay.inputs import topology
from pytest_overlay.report import study
from pytest_overlay.results import write_json

from .records import record

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="no browser: Debian's chromium and chromium-driver are not installed "
                                       "(make test's set-up installs them)")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def seen(browser, page) -> dict:
    """What the page shows: its text, each image's natural width, each table's row count."""
    browser.get(page.as_uri())
    return browser.execute_script(
        "return {text: document.body.innerText,"
        " images: Array.from(document.images).map(i => [i.getAttribute('src'), i.complete ? i.naturalWidth : 0]),"
        " tables: Array.from(document.querySelectorAll('table')).map(t => t.querySelectorAll('tr').length)};")


def assert_readable(page: dict) -> None:
    assert page["images"] and all(width > 0 for _, width in page["images"]), page["images"]
    assert page["tables"] and all(rows >= 2 for rows in page["tables"]), page["tables"]  # a header and a row
    for word in ("NaN", "None", "nan"):
        assert f" {word} " not in f" {page['text']} ".replace("|", " "), word


def _latency(overlay, src, dst, mean):
    values = [mean - 0.05, mean, mean + 0.05] * 40
    return record("latency", values, overlay=overlay, src=src, dst=dst, expected={"rtt_ms": mean},
                  extra={"samples": values})


def test_a_run_report_renders(browser, tmp_path):
    topo = topology.load("local")
    records = [_latency("host", "A", "B", 20.1), _latency("libnetwork", "A", "B", 20.3),
               record("tcp_throughput", [900.0, 910.0, 905.0], src="A", dst="B", total=905.0,
                      expected={"rate_mbit": 1000}, extra={"retransmits": 0}),
               record("tcp_throughput", [800.0, 820.0, 810.0], overlay="libnetwork", src="A", dst="B", total=810.0,
                      expected={"rate_mbit": 1000}, extra={"retransmits": 3})]
    report.write_files(tmp_path, records, topo, {"host": "vm", "kernel": "6.18"})
    page = seen(browser, tmp_path / "index.html")
    assert_readable(page)
    assert {src for src, _ in page["images"]} == {"latency_cdf.png", "throughput.png"}


def test_the_study_page_renders_with_published_against_measured_first(browser, tmp_path):
    reference = study.load_reference()["docker_to_docker_latency"]
    records = [_latency("host", *circuit.split("-"), row["libnetwork"][1])
               for circuit, row in reference.items()]
    records += [_latency(overlay, *circuit.split("-"), means[1] + 0.3)
                for circuit, row in reference.items() for overlay, means in row.items()]
    for r in records:  # what the overlays record of their datapath, which the study's answers quote
        if r.overlay == "flannel":
            r.datapath = {"kind": "flannel-vxlan", "backend": "vxlan",
                          "routes": {"AMS": {"10.40.2.0/24": "via 10.40.2.0 dev flannel.1 onlink"}}}
        if r.overlay == "weave":
            r.datapath = {"kind": "weave-sleeve", "weave_datapath": "sleeve", "peer_connections": {"BRA": [
                {"state": "established", "info": "sleeve 198.18.0.4:6783 mtu=1438"}]}}
    write_json(tmp_path / "ptp.json", {}, records)
    write_json(tmp_path / "buffers.json", {}, [])
    study.write_report(tmp_path, [], 60.0)
    page = seen(browser, tmp_path / "index.html")
    assert_readable(page)
    assert page["images"][0][0] == "published_vs_measured.png"
