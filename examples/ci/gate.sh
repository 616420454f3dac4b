#!/usr/bin/env bash
# The gate both CI recipes run (as root, from the checkout, after `make venv`). docs/ci.md says
# how to use it; every setting is a variable:
#
#   AB          A,B: compare two variants in this job, interleaved (`--overlay-ab`), e.g.
#               "flannel[bin=$PWD/base/flanneld],flannel[bin=$PWD/head/flanneld]"; no
#               stored baseline is used or needed. Unset: gate against the saved baseline.
#   OVERLAYS    the overlays gated against the baseline (default host,libnetwork)
#   TOPOLOGY    a topology file or bundled name (default geant, the study's four sites)
#   MARKS       the suites' markers (default "latency or tcp")
#   FAIL        the limits, space-separated METRIC[:STAT]:LIMIT[%] (empty: none; default
#               "latency:0.5% tcp_throughput:3%")
#   BASELINE    the name runs are saved and compared under (default baseline); the newest
#               run of that name is the one compared
#   SAVE_BASELINE=1   keep this run as the newest baseline (the main branch; also how an
#               intended change is accepted: see docs/ci.md)
#   FIRST_BASELINE=1  no baseline yet is expected: this run, ungated, is saved as the first
#   PYTEST      the pytest to run (default .venv/bin/pytest)
#
# Exit: 0 nothing regressed; 1 a gate or a threshold failed; 2-5 pytest's own; 6 no failure but
# a test could not be judged (a gate's change within its noise, an A/B verdict still unknown, a
# measurement INVALID for the machine's load: the summary names each); 7 there was no baseline
# to compare with, so nothing was gated (never 0: a gate does not pass by having nothing to
# compare).
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTEST=${PYTEST:-.venv/bin/pytest}
TOPOLOGY=${TOPOLOGY:-geant}
MARKS=${MARKS:-latency or tcp}
FAIL=${FAIL-latency:0.5% tcp_throughput:3%}
BASELINE=${BASELINE:-baseline}
NO_BASELINE_STATUS=7

say() {  # a line the CI shows as an annotation on GitHub, and in the log everywhere
    if [ "${GITHUB_ACTIONS:-}" = true ]; then echo "::$1::$2"; fi
    echo "gate.sh: $2" >&2
}

mkdir -p results
common=(suites/ -m "$MARKS" "--topology=$TOPOLOGY" --benchmark-storage=file://.benchmarks
        --junit-xml=results/junit.xml --overlay-report=results/report --overlay-json=results/run.json)
missing=0
save=${SAVE_BASELINE:-0}
if [ -n "${AB:-}" ]; then
    limits=()
    for limit in $FAIL; do limits+=("--overlay-ab-fail=$limit"); done
    run=(--overlay-ab="$AB" "${limits[@]}")
else
    run=("--overlay=${OVERLAYS:-host,libnetwork}")
    if compgen -G ".benchmarks/*/overlay/[0-9][0-9][0-9][0-9]_${BASELINE}.json" > /dev/null; then
        run+=("--overlay-compare=$BASELINE")
        for limit in $FAIL; do run+=("--overlay-compare-fail=$limit"); done
    elif [ "${FIRST_BASELINE:-0}" = 1 ] || [ "$save" = 1 ]; then
        save=1
        say notice "no saved '$BASELINE' run in .benchmarks/: this run, ungated, is saved as the first"
    else
        missing=1
        say warning "no saved '$BASELINE' run in .benchmarks/ (first run, an evicted cache, or a cache this branch cannot read): measured but NOT gated; exit $NO_BASELINE_STATUS. Make one with SAVE_BASELINE=1 on the main branch, or FIRST_BASELINE=1"
    fi
    if [ "$save" = 1 ]; then
        run+=("--overlay-save=$BASELINE")
    fi
fi
"$PYTEST" "${common[@]}" "${run[@]}"
status=$?
if [ -n "${GITHUB_STEP_SUMMARY:-}" ] && [ -f results/report/report.md ]; then
    cat results/report/report.md >> "$GITHUB_STEP_SUMMARY"
fi
if [ "$missing" = 1 ] && { [ "$status" = 0 ] || [ "$status" = 6 ]; }; then
    exit "$NO_BASELINE_STATUS"
fi
exit "$status"
