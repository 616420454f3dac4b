"""A/B in one run (--overlay-ab=A,B): each metric's paired verdict on each circuit, B
against A (docs/ab.md). Without --overlay-ab these tests are not run; with it, the
per-overlay suites are not."""

import pytest


@pytest.mark.latency
def test_ab_latency(ab_path):
    ab_path.conclude()


@pytest.mark.jitter
def test_ab_jitter(ab_path):
    ab_path.conclude()


@pytest.mark.throughput
@pytest.mark.tcp
def test_ab_tcp_throughput(ab_path):
    ab_path.conclude()


@pytest.mark.throughput
@pytest.mark.udp
def test_ab_udp_throughput(ab_path):
    ab_path.conclude()
