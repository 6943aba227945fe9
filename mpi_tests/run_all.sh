#!/usr/bin/env bash
# run_all.sh - every test of the project (what `make test` and CI run).
#
#   1. the cmocka unit tests, normal build
#   2. the same unit tests built with AddressSanitizer + UBSan
#   3. the shell tests in mpi_tests/integration/ (real mpirun runs on the
#      fixtures and on synthesized checkpoints, bad-input cases, CLI)
#
# Each unit test case and each shell check counts once. The last line is
# "N passed, M failed"; the exit status is non-zero when anything failed.
set -u
cd "$(dirname "$0")/.."
export FM_RESULTS=$(mktemp /tmp/fsdpmerge-results.XXXXXX)
trap 'rm -f "$FM_RESULTS"' EXIT
# intercept_tls_get_addr=0: LeakSanitizer's exit-time scan crashes in binaries
# that start MPI with parallel HDF5 linked (seen with Debian 12's packages)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:fast_unwind_on_malloc=0:abort_on_error=0:intercept_tls_get_addr=0}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/mpi_tests/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

only=${1:-}

# A cmocka binary: count its passed and failed cases.
run_unit() {
    local bin=$1 log
    log=$(mktemp)
    "$bin" > "$log" 2>&1
    local rc=$? passed failed
    passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
    failed=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
    passed=${passed:-0}
    failed=${failed:-0}
    if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi # crashed or sanitizer report
    for ((i = 0; i < passed; i++)); do echo OK >> "$FM_RESULTS"; done
    for ((i = 0; i < failed; i++)); do echo FAIL >> "$FM_RESULTS"; done
    if [ "$failed" -ne 0 ]; then
        echo "FAIL $bin ($passed passed, $failed failed; rerun: $bin)"
        sed -n '/FAILED\|ERROR\|error\|Sanitizer\|runtime error/p' "$log" | head -40
    else
        echo "OK   $bin ($passed cases)"
    fi
    rm -f "$log"
}

if [ -z "$only" ] || [ "$only" = unit ]; then
    echo "== unit tests"
    for b in build/tests/test_*; do [ -x "$b" ] && run_unit "$b"; done
    echo "== unit tests under AddressSanitizer + UndefinedBehaviorSanitizer"
    for b in build-asan/tests/test_*; do [ -x "$b" ] && run_unit "$b"; done
fi

if [ -z "$only" ] || [ "$only" = integration ]; then
    for t in mpi_tests/integration/*.sh; do
        echo "== $t"
        bash "$t" || { echo "FAIL $t exited early"; echo FAIL >> "$FM_RESULTS"; }
    done
fi

passed=$(grep -c '^OK' "$FM_RESULTS")
failed=$(grep -c '^FAIL' "$FM_RESULTS")
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
