"""Topologies of N sites for scale runs (``python -m pytest_overlay topology mesh --sites 20``):
full mesh, star, ring and random geometric graphs over real cities, each link's RTT what
light in fibre takes over the great-circle distance, plus a constant per link for the
equipment at its ends.

Real routes are longer than great circles, so these RTTs are a floor: `--stretch` scales the
distance. The study's own circuits say how far a real WAN can be from the floor: AMS-MIL is
829 km, 9.3 ms here with the default 1 ms per link, against 36.5 ms measured over GÉANT in
2016; BRA-LJU is 304 km, 4.1 ms, against 47.4 ms (its traffic went round through other PoPs).
A hand-written file such as geant.yaml is the way to give measured RTTs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..paths import DATA

CITIES_FILE = DATA / "cities.yaml"
EARTH_RADIUS_KM = 6371.0
FIBRE_KM_PER_MS = 299_792.458 * 2 / 3 / 1000  # two-thirds of light speed in vacuum
KINDS = ("mesh", "star", "ring", "random")


@dataclass(frozen=True)
class City:
    code: str
    name: str
    lat: float
    lon: float


def cities() -> list[City]:
    return [City(code, name, lat, lon) for code, (name, lat, lon) in yaml.safe_load(CITIES_FILE.read_text()).items()]


def great_circle_km(a: City, b: City) -> float:
    """Haversine distance on a spherical Earth."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


@dataclass
class Spec:
    """What to generate: the shape, how many sites, and how links are given their RTT."""

    kind: str
    sites: int
    hop_ms: float = 1.0  # RTT each link adds for the equipment at its ends
    stretch: float = 1.0  # route length over great-circle distance
    rate_mbit: float | None = 1000.0
    jitter_ms: float = 0.0
    degree: float = 3.0  # random: the mean number of links per site wanted
    seed: int = 1

    def check(self) -> None:
        available = len(cities())
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        least = {"mesh": 2, "star": 2, "ring": 3, "random": 3}[self.kind]
        if not least <= self.sites <= available:
            raise ValueError(f"--sites {self.sites}: a {self.kind} needs {least} to {available} sites "
                             f"({available} cities in {CITIES_FILE.name})")
        if self.hop_ms < 0 or self.stretch < 1 or self.jitter_ms < 0 or (self.rate_mbit is not None and
                                                                          self.rate_mbit <= 0):
            raise ValueError("--hop-ms and --jitter-ms must be 0 or more, --stretch 1 or more, --rate-mbit above 0")
        if self.kind == "random" and not 2 <= self.degree <= self.sites - 1:
            raise ValueError(f"--degree {self.degree:g}: from 2 to {self.sites - 1} (sites - 1)")

    def rtt_ms(self, a: City, b: City) -> float:
        return round(2 * great_circle_km(a, b) * self.stretch / FIBRE_KM_PER_MS + self.hop_ms, 2)


def pairs(spec: Spec, chosen: list[City]) -> list[tuple[City, City]]:
    """The linked pairs of the shape."""
    n = len(chosen)
    if spec.kind == "mesh":
        return [(chosen[i], chosen[j]) for i in range(n) for j in range(i + 1, n)]
    if spec.kind == "star":
        hub = min(chosen, key=lambda c: sum(great_circle_km(c, o) for o in chosen))  # the most central city
        return [(hub, c) for c in chosen if c is not hub]
    if spec.kind == "ring":
        lat = sum(c.lat for c in chosen) / n
        lon = sum(c.lon for c in chosen) / n
        around = sorted(chosen, key=lambda c: math.atan2(c.lat - lat, (c.lon - lon) * math.cos(math.radians(lat))))
        return [(around[i], around[(i + 1) % n]) for i in range(n)]
    return _random_geometric(spec, chosen)


def _random_geometric(spec: Spec, chosen: list[City]) -> list[tuple[City, City]]:
    """Sites linked where they are within a radius, chosen (with a seeded jitter on each
    distance, so equal seeds give equal graphs) for the mean degree asked for; then the
    components joined by their nearest pair, so every site reaches every other."""
    rng = random.Random(spec.seed)
    n = len(chosen)
    scored = sorted(((great_circle_km(chosen[i], chosen[j]) * rng.uniform(0.8, 1.2), i, j)
                     for i in range(n) for j in range(i + 1, n)))
    wanted = min(len(scored), round(spec.degree * n / 2))
    links = {(i, j) for _, i, j in scored[:wanted]}
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in links:
        parent[root(i)] = root(j)
    for _, i, j in scored[wanted:]:
        if root(i) != root(j):
            links.add((i, j))
            parent[root(i)] = root(j)
    return [(chosen[i], chosen[j]) for i, j in sorted(links)]


def topology(spec: Spec) -> dict:
    """The topology file's content: sites with their cities, links with their RTTs."""
    spec.check()
    chosen = cities()[:spec.sites]
    links = []
    for a, b in pairs(spec, chosen):
        link = {"between": [a.code, b.code], "rtt_ms": spec.rtt_ms(a, b)}
        if spec.jitter_ms:
            link["jitter_ms"] = spec.jitter_ms
        if spec.rate_mbit is not None:
            link["rate_mbit"] = spec.rate_mbit
        links.append(link)
    data = {"name": f"{spec.kind}{spec.sites}",
            "description": f"generated {spec.kind} of {spec.sites} sites over European cities",
            "sites": {c.code: {"location": c.name} for c in chosen}, "links": links}
    if spec.kind == "star":
        data["hub"] = pairs(spec, chosen)[0][0].code
    return data


def write(spec: Spec, out: Path, command: str) -> dict:
    data = topology(spec)
    header = (f"# Generated by `{command}`.\n# Link RTT = 2 x great-circle km x {spec.stretch:g} (stretch) / "
              f"{FIBRE_KM_PER_MS:.1f} km per ms (2/3 c in fibre) + {spec.hop_ms:g} ms per link.\n")
    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None, width=120)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + body)
    return data
