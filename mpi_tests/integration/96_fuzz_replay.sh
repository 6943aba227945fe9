#!/usr/bin/env bash
# The fuzz corpus replayed under ASan+UBSan: every seed made from the
# fixtures (mpi_tests/fuzz/seeds.sh) and every committed input of
# mpi_tests/fuzz/corpus/<harness>/ (crashes found by `make fuzz`, kept after
# the fix) through each harness built with gcc (make fuzz-replay). A
# sanitizer report or a crash fails the case.
source "$(dirname "$0")/../lib.sh"

for h in pkl ptz st json; do
    [ -x "$FM_ROOT/build-asan/fuzz/replay_$h" ] || make -s -C "$FM_ROOT" "build-asan/fuzz/replay_$h" \
        || { fail "cannot build build-asan/fuzz/replay_$h"; exit 0; }
done
bash "$FM_ROOT/mpi_tests/fuzz/seeds.sh" "$FIX" "$SCRATCH/seeds" > /dev/null || { fail "seeds.sh"; exit 0; }
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:intercept_tls_get_addr=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
for h in pkl ptz st json; do
    n=$(ls "$SCRATCH/seeds/$h" | wc -l)
    out=$("$FM_ROOT/build-asan/fuzz/replay_$h" "$SCRATCH/seeds/$h" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] && [ "$n" -gt 0 ] && echo "$out" | grep -q "^replayed $n inputs$"; then
        pass "fuzz corpus of $h: $n inputs replayed under ASan+UBSan, no report"
    else
        fail "fuzz corpus of $h: exit $rc (rerun: build-asan/fuzz/replay_$h FILES)"
        echo "$out" | tail -20
    fi
done
