#!/usr/bin/env bash
# The regression gate both CI recipes run (as root, from the checkout, after `make venv`).
# With a saved baseline in .benchmarks/ it compares and gates; on the main branch
# (SAVE_BASELINE=1) the run becomes the next baseline. Exit: 0 no regression, 1 a gate or a
# threshold failed, 2-5 pytest's own, 6 no failure but a test could not be judged (a gate's change
# within its noise, a measurement INVALID for the machine's load): each a skip the summary names.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p results
gate=()
if compgen -G ".benchmarks/*/overlay/*_baseline.json" > /dev/null; then
    gate=(--overlay-compare=baseline --overlay-compare-fail=latency:0.5% --overlay-compare-fail=tcp_throughput:3%)
fi
save=()
if [ "${SAVE_BASELINE:-0}" = 1 ]; then
    save=(--overlay-save=baseline)
fi
exec .venv/bin/pytest suites/ -m "latency or tcp" --overlay=host,libnetwork --benchmark-storage=file://.benchmarks \
    --junit-xml=results/junit.xml --overlay-report=results/report --overlay-json=results/run.json \
    "${gate[@]}" "${save[@]}"
