#!/usr/bin/env bash
# fuzz.sh - runs each libFuzzer harness (build-fuzz/fuzz_*, `make fuzz`) for
# FUZZ_SECONDS on its corpus: the seeds made from the fixtures
# (mpi_tests/fuzz/seeds.sh) plus what earlier runs found (FUZZ_DIR, default
# build-fuzz/corpus). A crash is saved as build-fuzz/crash-<harness>-*: copy
# it into mpi_tests/fuzz/corpus/<harness>/ with the fix, so that the test
# suite replays it (96_fuzz_replay.sh). Prints executions and time per harness.
set -u
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-600}
dir=${FUZZ_DIR:-build-fuzz/corpus}
fix=${FSDPMERGE_FIXTURES:-../shared/fixtures}
bash mpi_tests/fuzz/seeds.sh "$fix" "$dir/seeds" || exit 1
rc=0
for h in ${FUZZ_HARNESSES:-pkl ptz st json}; do
    mkdir -p "$dir/$h"
    log=build-fuzz/fuzz_$h.log
    nice ./build-fuzz/fuzz_$h -max_total_time="$secs" -rss_limit_mb=2048 -max_len=1048576 -timeout=10 \
        -artifact_prefix="build-fuzz/crash-$h-" "$dir/$h" "$dir/seeds/$h" > "$log" 2>&1
    r=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    [ -z "$execs" ] && execs=$(grep -Eo '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    echo "fuzz_$h: ${execs:-?} executions in $secs s, exit $r, corpus $(ls "$dir/$h" | wc -l) files (log: $log)"
    [ $r -ne 0 ] && rc=1
done
exit $rc
