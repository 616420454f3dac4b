"""Testbeds: where the sites are. The contract both backends keep and overlays call; the
emulated testbed (namespaces, a Docker engine per site, the link emulator, run ids and
locks); and real hosts (ssh, host locks, preflight, swarm, WAN faults, clean, the lab)."""
