"""The registries other layers read instead of spelling names: overlay kinds (kinds.py),
metrics (results/metrics.py) with the path method that measures each, and probes."""

from __future__ import annotations

import pytest

from pytest_overlay import kinds
from pytest_overlay.measure import path, probes
from pytest_overlay.overlays.base import Overlay
from pytest_overlay.results import metrics


def test_every_kind_declares_itself():
    for name in kinds.names():
        kind = kinds.get(name)
        assert kind.name == name and kind.label and kind.description, name
        if kind.host_needs is not None:
            assert kind.host_needs.family is kind.family, name
        if kind.family is not None:
            assert kinds.families()[kind.family.name] is kind.family
    assert kinds.get(kinds.BASELINE).in_all
    assert kinds.in_all() == ("host", "libnetwork", "weave", "flannel", "calico")  # the study's five


def test_an_unknown_or_misnamed_kind_is_refused_with_what_is_known(monkeypatch):
    with pytest.raises(kinds.KindError, match="unknown overlay 'cilium'; known: host, libnetwork"):
        kinds.get("cilium")
    monkeypatch.setitem(kinds._table(), "impostor", "pytest_overlay.overlays.host:HostOverlay")
    kinds.get.cache_clear()
    try:
        with pytest.raises(kinds.KindError, match="'impostor' .* calls itself 'host'"):
            kinds.get("impostor")
    finally:
        kinds.get.cache_clear()


class HalfAKind(Overlay):
    """A kind that forgot its teardown and its label."""

    name = "half"
    description = "brings a network up and never down"

    def up(self) -> None:
        pass

    def endpoint(self, site: str):
        return None

    def datapath(self, src: str, dst: str) -> dict:
        return {}


def test_a_kind_that_leaves_out_a_part_of_the_contract_is_refused_naming_it(monkeypatch):
    monkeypatch.setitem(kinds._table(), "half", f"{__name__}:HalfAKind")
    kinds.get.cache_clear()
    try:
        with pytest.raises(kinds.KindError, match=r"'half' .* leaves out down, label: an overlay kind declares"):
            kinds.get("half")
    finally:
        kinds.get.cache_clear()
    with pytest.raises(TypeError, match="abstract"):
        HalfAKind(None)  # nor can it be made past the registry


def test_every_metric_names_its_probe_and_a_path_method_makes_it():
    for metric in metrics.METRICS.values():
        if metric.probe:
            assert metric.probe in probes.PROBES, metric.name
        if not (metric.streaming or metric.fault or metric.load):
            method, _ = path.MAKERS[metric.name]
            assert callable(method), metric.name
    assert path.MAKERS["udp_loss"] == (path.OverlayPath.udp, 1)
    with pytest.raises(KeyError):
        path.makes("no_such_metric")(lambda self: None)


def test_every_probe_has_a_shape_the_accounting_knows():
    assert {p.shape for p in probes.PROBES.values()} <= set(probes.SHAPES)
    assert [p.kind for p in probes.PROBES.values() if p.congestion_controlled] == ["tcp"]
    assert [p.kind for p in probes.PROBES.values() if p.counts_loss] == ["udp"]
