"""Overlays: what the probes' traffic runs through between two sites. One module per overlay;
each is imported only when a run asks for it (Docker's client is a heavy import)."""

from __future__ import annotations

import importlib

from .base import ContainerEndpoint, Overlay, OverlayUnavailable, SiteEndpoint

# name -> module:class
IMPLEMENTED = {
    "host": "host:HostOverlay",
    "libnetwork": "libnetwork:LibnetworkOverlay",
    "libnetwork-encrypted": "libnetwork:EncryptedLibnetworkOverlay",
}
# What the study compared and this project plans; a name here but not above is refused
# with the list of what is available.
KNOWN = (*IMPLEMENTED, "weave", "flannel", "calico")
BASELINE = "host"


def get(name: str) -> type[Overlay]:
    module, _, cls = IMPLEMENTED[name].partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


__all__ = ["BASELINE", "ContainerEndpoint", "IMPLEMENTED", "KNOWN", "Overlay", "OverlayUnavailable", "SiteEndpoint",
           "get"]
