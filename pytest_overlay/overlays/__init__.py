"""Overlays: what the probes' traffic runs through between two sites. One module per overlay;
each is imported only when a run asks for it (Docker's client is a heavy import)."""

from __future__ import annotations

import importlib

from ..testbeds.hostnet import Footprint
from .base import ContainerEndpoint, HostNeeds, Overlay, OverlayUnavailable

# name -> module:class
IMPLEMENTED = {
    "host": "host:HostOverlay",
    "libnetwork": "libnetwork:LibnetworkOverlay",
    "libnetwork-encrypted": "libnetwork:EncryptedLibnetworkOverlay",
    "weave": "weave:WeaveOverlay",
    "weave-encrypted": "weave:EncryptedWeaveOverlay",
    "flannel": "flannel:FlannelOverlay",
    "flannel-udp": "flannel:FlannelUdpOverlay",
    "flannel-host-gw": "flannel:FlannelHostGwOverlay",
    "calico": "calico:CalicoOverlay",
}
KNOWN = tuple(IMPLEMENTED)
BASELINE = "host"
# `--overlay=all`: the underlay and the study's overlays, each with its default datapath.
ALL = ("host", "libnetwork", "weave", "flannel", "calico")


def get(name: str) -> type[Overlay]:
    module, _, cls = IMPLEMENTED[name].partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def footprint(name: str) -> Footprint | None:
    """What the overlay called `name` adds to a real host's network (None: nothing, or no
    such overlay), for undoing it after a run that is over."""
    needs = get(name).host_needs if name in IMPLEMENTED else None
    return needs.footprint if needs else None


__all__ = ["ALL", "BASELINE", "ContainerEndpoint", "HostNeeds", "IMPLEMENTED", "KNOWN", "Overlay", "OverlayUnavailable",
           "footprint", "get"]
