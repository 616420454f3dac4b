"""Overlays: what the probes' traffic runs through between two sites. One module per kind,
each declaring itself on its class (base.Overlay); the registry that finds them, built in or
from other distributions, is kinds.py, whose questions are handed on here."""

from __future__ import annotations

from ..kinds import BASELINE, KindError, footprint, get, host_needs, in_all, names
from .base import Overlay, OverlayUnavailable

__all__ = ["BASELINE", "KindError", "Overlay", "OverlayUnavailable", "footprint", "get", "host_needs", "in_all",
           "names"]
