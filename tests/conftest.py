"""Helpers for the project's own tests: run pytest on the suites in a child process, and
see what a run leaves on the machine. Each test is marked by the layer it needs, from its
folder: unit (nothing), system (root and namespaces), docker (engines), package (a wheel)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_overlay.options import UNDECIDED_STATUS
from pytest_overlay.paths import DATA_ROOT, STATE_ROOT
from pytest_overlay.procs import cgroup_dirs
from pytest_overlay.testbeds.real.hostlock import LOCKS as HOST_LOCKS
from pytest_overlay.testbeds.real.hosts import HOST_STATE

LOCKS, HOST_ROOT = Path(HOST_LOCKS), Path(HOST_STATE)

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
RELAXED_FILE = Path(__file__).parent / "relaxed-thresholds.yaml"
RELAXED = f"--overlay-thresholds={RELAXED_FILE}"
LAYERS = ("unit", "system", "docker", "package")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        layer = Path(str(item.path)).parent.name
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))


# A child pytest of the suites: no cache, and without Hypothesis's plugin, whose import took 2 of
# a child's 3 s to start here (only the unit tests use Hypothesis).
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest"]

# Short probes: the subject of the tests that use them is the plumbing. One streaming level;
# the tests of the levels themselves ask for two.
QUICK = ["--topology=local", "--overlay-samples=60", "--overlay-interval=5", "--overlay-duration=1",
         "--overlay-udp-rate=200", "--overlay-concurrency=5", "--overlay-stream-seconds=2", "--overlay-retries=2",
         RELAXED]


# Tests of the plumbing skipped because the machine was starved, with the cause: counted in
# the summary, never passed silently and never failed.
STARVED: list[str] = []
STARVED_SKIP = "machine starved: "


def wait_for(condition, what: str, timeout: float = 30.0, every: float = 0.05):
    """Poll `condition` until it returns something true (returned), instead of sleeping for a
    time that a loaded machine may overrun; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:g} s")


@contextlib.contextmanager
def on_the_machines_time():
    """For assertions on times or rates the machine keeps (a fault's length, a shaped rate, a
    CPU quota's share): one that fails while the hypervisor took the CPUs in a burst (steal,
    /proc/stat) skips with that cause, the one thing outside the code under test; any other
    failure stands, a busy neighbour's included."""
    from pytest_overlay.measure import machine

    monitor = machine.monitor()
    began = time.time_ns()
    try:
        yield
    except AssertionError:
        window = monitor.window(began, time.time_ns())
        if window.steal_burst:
            pytest.skip(f"{STARVED_SKIP}{window.cause()}")
        raise


def steal_during(*records: dict) -> str:
    """The hypervisor's burst of steal while any of these results (JSON) was measured, in
    words ("" where none was)."""
    for r in records:
        burst = (r.get("measured") or {}).get("steal_burst")
        if burst:
            return f"{r['overlay']} {r['src']}-{r['dst']} {r['metric']}: the hypervisor took {burst['pct']:.0f} % of " \
                   f"the CPUs for {burst['seconds']:.1f} s"
    return ""


@dataclass
class Run:
    rc: int
    output: str
    results: Path | None = None

    def starved(self) -> str | None:
        """Why the child run failed, where every failed test failed only because its
        measurement was INVALID for the machine's load after its retries (the emulator
        touched too many samples, a CPU-bound sender or clients); else None."""
        failed = set(re.findall(r"^FAILED (\S+)", self.output, re.MULTILINE))
        if self.rc != 1 or not failed or self.results is None or not self.results.exists():
            return None
        import json

        from pytest_overlay.measure import validity

        records = json.loads(self.results.read_text()).get("results", [])
        causes = {}
        for nodeid in failed:
            invalid = [r for r in records if r["test"] == nodeid and not r["valid"]]
            if not invalid or not all(validity.load_related(r["invalid_reasons"]) for r in invalid):
                return None
            r = invalid[0]
            causes[nodeid] = (f"{r['overlay']} {r['src']}-{r['dst']} {r['metric']} INVALID {r['tries']} times: "
                              f"{r['invalid_reasons'][0]}")
        return "; ".join(causes.values())

    def skip_if_starved(self, *tests: str) -> None:
        """For a test that expects its child run to fail for another reason (a threshold, a
        gate): where a measurement it asserts on (of the child's `tests`, by their node ids'
        ends) is INVALID only for the machine's load, that reason cannot be checked, so the
        test skips with the cause. Another record's INVALID is no reason to skip."""
        if self.results is None or not self.results.exists():
            return
        import json

        from pytest_overlay.measure import validity

        for r in json.loads(self.results.read_text()).get("results", []):
            if not r["test"].endswith(tests):
                continue
            if not r["valid"] and validity.load_related(r["invalid_reasons"]):
                pytest.skip(f"{STARVED_SKIP}{r['overlay']} {r['src']}-{r['dst']} {r['metric']} INVALID "
                            f"{r['tries']} times: {r['invalid_reasons'][0]}")

    def undecided(self) -> dict[str, str]:
        """The child's tests that ended as skips because they could not be judged (pytest-overlay's
        own verdict: INVALID for the machine's load, or a gate inconclusive), with why."""
        if self.results is None or not self.results.exists():
            return {}
        import json

        return json.loads(self.results.read_text()).get("run", {}).get("verdicts", {}).get("undecided", {})

    def passed(self) -> None:
        """The child run passed; or, where only the machine's load failed it, this test is
        skipped with that cause (its subject is the plumbing, not the emulator's timing)."""
        undecided = self.undecided()
        load = {n: why for n, why in undecided.items() if "for the machine's load" in why}
        if self.rc in (0, UNDECIDED_STATUS) and load:
            pytest.skip(f"{STARVED_SKIP}{'; '.join(load.values())}")
        if self.rc == 0 or (self.rc == UNDECIDED_STATUS and undecided):
            return
        cause = self.starved()
        if cause:
            pytest.skip(f"{STARVED_SKIP}{cause}")
        assert self.rc == 0, self.output


def run_suites(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> Run:
    """pytest in a child process from the checkout; the results always go to a JSON file, so
    that a failure can be told apart from the machine's load."""
    chars = [a[2:] for a in args if re.fullmatch(r"-r[a-zA-Z]+", a)]
    if chars and not set("fAa") & set(chars[-1]):
        raise ValueError(f"-r{chars[-1]} hides the FAILED lines that tell a starved run from a failed one: add f")
    given = next((a.split("=", 1)[1] for a in args if a.startswith("--overlay-json=")), None)
    results = Path(given) if given else Path(tempfile.mkdtemp(prefix="overlay-run-")) / "results.json"
    extra = [] if given or not any(a.startswith("suites") for a in args) else [f"--overlay-json={results}"]
    done = subprocess.run(
        [*PYTEST, *args, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env} if env else None,
    )
    return Run(done.returncode, done.stdout + done.stderr, results)


LAYER_TIMES: dict[str, list[float]] = {}  # layer -> [first start, last end, tests]


def pytest_runtest_logstart(nodeid: str, location) -> None:
    layer = nodeid.split("/")[1] if nodeid.startswith("tests/") and nodeid.count("/") >= 2 else None
    if layer in LAYERS:
        now = time.monotonic()
        times = LAYER_TIMES.setdefault(layer, [now, now, 0])
        times[2] += 1


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and isinstance(report.longrepr, tuple) and STARVED_SKIP in str(report.longrepr[2]):
        STARVED.append(f"{report.nodeid}: {str(report.longrepr[2]).split(STARVED_SKIP, 1)[1]}")


def pytest_runtest_logfinish(nodeid: str, location) -> None:
    layer = nodeid.split("/")[1] if nodeid.startswith("tests/") and nodeid.count("/") >= 2 else None
    if layer in LAYER_TIMES:
        LAYER_TIMES[layer][1] = time.monotonic()


def pytest_terminal_summary(terminalreporter) -> None:
    if LAYER_TIMES:
        terminalreporter.section("time per layer")
        for layer in LAYERS:
            if layer in LAYER_TIMES:
                start, end, count = LAYER_TIMES[layer]
                terminalreporter.write_line(f"{layer:8} {end - start:7.1f} s wall for {count} tests")
    if STARVED:
        terminalreporter.section("skipped because the machine was starved")
        terminalreporter.write_line(f"{len(STARVED)} test(s) skipped, each for a measurement INVALID for the "
                                    "machine's load after its retries:")
        for cause in STARVED:
            terminalreporter.write_line(f"  {cause}")


def two_sites(directory: Path, rtt_ms: float, extra: str = "") -> Path:
    """A topology file of two sites, A and B, one link apart."""
    path = directory / f"two-sites-{rtt_ms:g}.yaml"
    path.write_text(f"name: pair\nsites: {{A: {{}}, B: {{}}}}\nlinks: [{{between: [A, B], rtt_ms: {rtt_ms:g}}}]\n{extra}")
    return path


def ours(name: str) -> bool:
    return name.startswith("ovl")


RUN_OF = re.compile(r"ovl([0-9a-f]{6})")
# Children of this session inherit it; a run whose lock holder lacks it belongs to someone else.
SESSION = os.environ.setdefault("PYTEST_OVERLAY_TEST_SESSION", uuid.uuid4().hex)


def foreign_runs() -> set[str]:
    """Runs this test session did not start (a `make bench` beside it, say), known by the
    process holding their lock: theirs to tear down, not ours to count."""
    holders = {}
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; waiters have "->"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[4].isdigit():
            holders[int(fields[5].rsplit(":", 1)[1])] = int(fields[4])
    marker = f"PYTEST_OVERLAY_TEST_SESSION={SESSION}".encode()
    foreign = set()
    for lock in STATE_ROOT.glob("*/lock"):
        try:
            pid = holders.get(os.stat(lock).st_ino)
        except OSError:
            continue
        if pid is None or pid == os.getpid():
            continue
        try:
            ours = marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            ours = False  # shown as 0, or gone: a holder outside our PID namespace is not of this session
        if not ours:
            foreign.add(lock.parent.name)
    return foreign


def machine_state() -> dict:
    """Namespaces, root-namespace links and run files of this tool, and every process living
    in one of its namespaces or cgroups; runs of other sessions on the machine left out."""
    foreign = foreign_runs()

    def mine(name: str) -> bool:
        match = RUN_OF.search(name)
        return match is None or match.group(1) not in foreign

    names = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    inodes = {os.stat(f"/run/netns/{n}").st_ino: n for n in names if ours(n)}
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # dead, waiting for its parent (or init) to reap it
            netns = inodes.get(os.stat(f"/proc/{pid}/ns/net").st_ino)
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
            if (netns and mine(netns)) or ("/ovl" in cgroup and mine(cgroup)):
                procs.append(int(pid))
        except OSError:
            pass
    files = [str(p) for root in (STATE_ROOT, DATA_ROOT, HOST_ROOT) if root.is_dir()
             for p in sorted(root.iterdir()) if p.name not in foreign and p != LOCKS]
    # The lab's hosts keep their lock directory, for good as /run/lock; not its files.
    files += [str(p) for p in sorted(LOCKS.iterdir())] if LOCKS.is_dir() else []
    return {
        "files": files,
        "netns": [n for n in names if ours(n) and mine(n)],
        "links": [name for name in (line.split(":")[1].strip() for line in links.splitlines() if "ovl" in line)
                  if mine(name)],
        "processes": procs,
        "cgroups": sorted({d.name for d in cgroup_dirs("ovl") if mine(d.name)}),
    }


def left_behind(before: dict, after: dict) -> dict:
    """What `after` has of this tool that `before` had not. What went in between is no leak:
    another session's `clean` may take runs that are over, and they are not ours to keep.
    A run that was up before and still is (a shared lab) owns the cgroups its engines make
    when they first start a container: they go with it, not with the test."""
    lasting = {m.group(1) for n in before["netns"] if n in after["netns"] and (m := RUN_OF.search(n))}

    def new(kind: str, x: str) -> bool:
        if kind == "cgroups" and (m := RUN_OF.search(x)) and m.group(1) in lasting:
            return False
        return x not in before[kind]

    return {kind: [x for x in items if new(kind, x)] for kind, items in after.items()
            if any(new(kind, x) for x in items)}


@pytest.fixture
def clean_machine():
    """Name: clean_machine. Scope: function. Asserts the test left no namespace, link,
    file or process of this tool behind."""
    before = machine_state()
    yield before
    assert left_behind(before, machine_state()) == {}
