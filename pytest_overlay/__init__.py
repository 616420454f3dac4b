"""pytest-overlay: what a Docker overlay network costs over a high-latency WAN."""

__version__ = "0.1.0"
