# lib.sh - shared helpers for the shell tests (sourced, not run).
#
# Every check prints "OK <what>" or "FAIL <what>" (with the exact command to
# rerun it on failure) and appends to $FM_RESULTS, which run_all.sh counts.

FM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FM_BIN=${FM_BIN:-$FM_ROOT/bin/fsdpmerge}
FM_SYNTH=${FM_SYNTH:-$FM_ROOT/bin/fsdpsynth}
FM_RESULTS=${FM_RESULTS:-/dev/null}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1

fm_fixtures() {
    local c
    for c in "${FSDPMERGE_FIXTURES:-}" "$FM_ROOT/../shared/fixtures" "$FM_ROOT/shared/fixtures"; do
        if [ -n "$c" ] && [ -d "$c" ]; then (cd "$c" && pwd); return 0; fi
    done
    echo "fixtures folder not found (set FSDPMERGE_FIXTURES)" >&2
    return 1
}

FIX=$(fm_fixtures) || { echo "FAIL fixtures folder not found" | tee -a "$FM_RESULTS"; exit 1; }

pass() { echo "OK   $*"; echo "OK" >> "$FM_RESULTS"; }
fail() { echo "FAIL $*"; echo "FAIL" >> "$FM_RESULTS"; }

# mpimerge NP ARGS... : runs fsdpmerge under mpirun, output in $OUT_LOG.
OUT_LOG=$(mktemp /tmp/fsdpmerge-log.XXXXXX)
mpimerge() {
    local np=$1
    shift
    mpirun -np "$np" "$FM_BIN" "$@" > "$OUT_LOG" 2>&1
}

# scratch folder removed at exit
SCRATCH=$(mktemp -d /tmp/fsdpmerge-test.XXXXXX)
trap 'rm -rf "$SCRATCH" "$OUT_LOG"' EXIT

# no_leftovers DIR : no hidden temporary output folder is left in DIR.
no_leftovers() {
    ! ls -a "$1" 2>/dev/null | grep -q 'fsdpmerge-'
}
