# pytest-overlay: `make bench` measures the GÉANT mesh on the underlay; `make test` runs the
# project's own tests. Both install what they need and are safe to run again (as root).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The real Weave Net and Flannel binaries, where the checkout has them beside it.
SHARED_BIN := $(abspath ../shared/bin)
export PATH := $(if $(wildcard $(SHARED_BIN)),$(SHARED_BIN):,)$(PATH)
# What the testbed and the tests need; the overlay kinds' packages and the probes' tools are theirs
# to declare (python -m pytest_overlay overlays --packages), installed by overlay-deps.
APT_PACKAGES := iptables nftables iproute2 iputils-ping util-linux procps docker.io mmdebstrap openssl gcc libc6-dev \
	stress-ng dropbear-bin openssh-client \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-plugins-ugly gir1.2-gst-rtsp-server-1.0 python3-gi python3-venv python3-pip \
	chromium chromium-driver
BENCH_ARGS ?= --topology=geant --overlay=host --overlay-retries=2 --overlay-json=results/bench.json
# Layers from the bottom up: unit (no root), system (namespaces), docker (engines), package (the wheel).
TEST_LAYERS := tests/unit tests/system tests/docker tests/package

.PHONY: bench test study test-unit test-system test-docker test-package deps overlay-deps venv clean-testbeds

bench: venv
	$(PY) -m pytest suites/ $(BENCH_ARGS) -p no:cacheprovider

test: venv
	$(PY) -m pytest $(TEST_LAYERS) -p no:cacheprovider --durations=15

study: venv
	$(PY) -m pytest_overlay study --out study

test-unit test-system test-docker test-package: test-%: venv
	$(PY) -m pytest tests/$* -p no:cacheprovider

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_FLAGS) $$missing; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml
	$(MAKE) deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Without recommends: wireguard-tools recommends WireGuard's kernel module, which apt meets with a
# whole kernel image; the kinds run wireguard-go, and name every package they use, as the probes do.
overlay-deps: $(VENV)/.installed
	@$(MAKE) --no-print-directory deps APT_FLAGS=--no-install-recommends \
		APT_PACKAGES="$$($(PY) -m pytest_overlay overlays --packages | tr '\n' ' ')"

venv: deps overlay-deps

clean-testbeds: venv
	$(PY) -m pytest_overlay clean
