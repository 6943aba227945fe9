#!/usr/bin/env bash
# bench.sh - memory and throughput of fsdpmerge against the storage's floor.
#
# For each model shape (BENCH_MODELS, default: the Qwen2.5-0.5B and -3B
# shapes, fp32, world size 4) and checkpoint layout (BENCH_LAYOUTS: verl
# rank files, and dcp: a torch.distributed.checkpoint folder as accelerate
# writes it, rows named MODEL-dcp) it synthesizes a checkpoint in BENCH_DIR
# and measures, in the same run:
#   - the I/O floor: reading every shard file once (cat > /dev/null, after a
#     warm-up read: the merge reads from the same page cache) plus writing
#     the output's number of bytes with fsync (dd conv=fsync, through the page
#     cache) - the targets are against this floor; and, for information, the
#     device floor: the same bytes written with O_DIRECT (dd oflag=direct),
#     what the disk can take when no copy into the page cache is made;
#   - fsdpmerge at -np 1, 2, 4 (BENCH_NPS) in gather and direct mode
#     (BENCH_MODES), bf16 output, mpirun start-up included: wall time, GB/s of
#     input, ratio to the floor, peak RSS of every process (GNU time);
#   - the same for `check CKPT` (reads every record, writes nothing) and
#     `verify OUT --checkpoint_path CKPT` (of a merge made once beforehand),
#     rows "check" and "verify": targets, at least as fast as the merge.
# Every measurement starts after `sync` (no earlier write-back in flight)
# and is repeated BENCH_REPEAT times (default 3); the table shows the median.
# Prints a table, writes docs/benchmarks-results.md and docs/bench.png, and
# checks the targets (printed as met or not met).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

BENCH_DIR=${BENCH_DIR:-/tmp/fsdpmerge-bench}
BENCH_MODELS=${BENCH_MODELS:-"qwen2.5-0.5b qwen2.5-3b"}
BENCH_NPS=${BENCH_NPS:-"1 2 4"}
BENCH_LAYOUTS=${BENCH_LAYOUTS:-"verl dcp"}
BENCH_MODES=${BENCH_MODES:-"auto gather direct hdf5 check verify"} # hdf5: --format hdf5 (parallel HDF5, model.h5)
BENCH_EXTRA=${BENCH_EXTRA:-}
BENCH_REPEAT=${BENCH_REPEAT:-3}
W=4
RSS_LIMIT_KB=$((256 * 1024))
RESULTS=${BENCH_RESULTS:-docs/benchmarks-results.md}
DATA=$BENCH_DIR/results.tsv

mkdir -p "$BENCH_DIR"
: > "$DATA"
now() { date +%s.%N; }
calc() { awk "BEGIN { print $* }"; }
secs() { calc "$2 - $1"; }

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# A case is a model shape in one layout: "qwen2.5-3b" (verl) or "qwen2.5-3b-dcp".
is_dcp() { [[ $1 == *-dcp ]]; }
shard_files() { # case dir -> the files a merge reads
    if is_dcp "$1"; then ls "$2"/pytorch_model_fsdp_0/.metadata "$2"/pytorch_model_fsdp_0/__*_0.distcp
    else ls "$2"/global_step_1/actor/model_world_size_${W}_rank_*.pt; fi
}
ckpt_of() { # case dir -> what to name on the fsdpmerge command line
    if is_dcp "$1"; then echo "$2"; else echo "$2/global_step_1"; fi
}
CASES=()
for model in $BENCH_MODELS; do
    for layout in $BENCH_LAYOUTS; do
        if [ "$layout" = dcp ]; then CASES+=("$model-dcp"); else CASES+=("$model"); fi
    done
done

floor_once() { # case dir, output bytes -> "read write" seconds
    local files
    mapfile -t files < <(shard_files "$1" "$2")
    shift
    sync
    local t0 t1 t2
    t0=$(now)
    cat "${files[@]}" > /dev/null
    t1=$(now)
    dd if=/dev/zero of="$BENCH_DIR/floor.bin" bs=16M count=$(( ($2 + 16777215) / 16777216 )) conv=fsync status=none
    t2=$(now)
    rm -f "$BENCH_DIR/floor.bin"
    sync
    local t3 t4
    t3=$(now)
    dd if=/dev/zero of="$BENCH_DIR/floor.bin" bs=16M count=$(( ($2 + 16777215) / 16777216 )) oflag=direct conv=fsync \
        status=none 2> /dev/null || true
    t4=$(now)
    rm -f "$BENCH_DIR/floor.bin"
    sync
    echo "$(secs "$t0" "$t1") $(secs "$t1" "$t2") $(secs "$t3" "$t4")"
}

floor_of() { # case dir bytes: the median of BENCH_REPEAT floors (after a warm-up read: the merge reads from the page cache too)
    shard_files "$1" "$2" | xargs cat > /dev/null
    local i reads=() writes=() directs=()
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        read -r r w d < <(floor_once "$1" "$2" "$3")
        reads+=("$r")
        writes+=("$w")
        directs+=("$d")
    done
    echo "$(printf '%s\n' "${reads[@]}" | median) $(printf '%s\n' "${writes[@]}" | median) $(printf '%s\n' "${directs[@]}" | median)"
}

merge_once() { # model np mode -> wall seconds; peak RSS per process in $BENCH_DIR/rss.*; non-zero if fsdpmerge failed
    local out=$BENCH_DIR/out-$1 ck
    ck=$(ckpt_of "$1" "$BENCH_DIR/$1")
    rm -rf "$out" "$BENCH_DIR"/rss.*
    sync
    local t0 t1 rc=0
    local how=(--mode "$3") cmd=("$ck" --output "$out")
    [ "$3" = hdf5 ] && how=(--format hdf5)
    [ "$3" = check ] && how=() && cmd=(check "$ck")
    [ "$3" = verify ] && how=() && cmd=(verify "$BENCH_DIR/verify-$1" --checkpoint_path "$ck")
    t0=$(now)
    # shellcheck disable=SC2086
    mpirun -np "$2" tools/rss_wrap.sh "$BENCH_DIR/rss" bin/fsdpmerge "${cmd[@]}" "${how[@]}" --dtype bfloat16 -q $BENCH_EXTRA \
        >&2 || rc=1
    t1=$(now)
    rm -rf "$out"
    secs "$t0" "$t1"
    return $rc
}

# Open MPI's own start-up and shutdown per process count (a run that does nothing): part of every
# wall time below, and the part no I/O work can shrink
declare -A LAUNCH
for np in $BENCH_NPS; do
    ls=()
    for ((i = 0; i < 3; i++)); do
        t0=$(now); mpirun -np "$np" bin/fsdpmerge --version > /dev/null; t1=$(now)
        ls+=("$(secs "$t0" "$t1")")
    done
    LAUNCH[$np]=$(printf '%s\n' "${ls[@]}" | median)
    printf '== Open MPI start-up and shutdown, -np %s: %.2f s\n' "$np" "${LAUNCH[$np]}"
done

for model in "${CASES[@]}"; do
    ck=$BENCH_DIR/$model
    if ! shard_files "$model" "$ck" > /dev/null 2>&1; then
        echo "== synthesizing $model (world size $W) in $ck"
        rm -rf "$ck"
        dcp=()
        is_dcp "$model" && dcp=(--dcp accelerate)
        mpirun -np $W bin/fsdpsynth --out "$ck" --world-size $W --model "${model%-dcp}" "${dcp[@]}" > /dev/null
    fi
    in_bytes=$(shard_files "$model" "$ck" | xargs cat | wc -c)
    # output bytes: a bf16 merge is about half the fp32 input; measured after the first run
    out_bytes=$(( in_bytes / 2 ))
    read -r t_read t_write t_direct < <(floor_of "$model" "$ck" "$out_bytes")
    floor=$(calc "$t_read + $t_write")
    dfloor=$(calc "$t_read + $t_direct")
    printf '== %s: %.2f GB of shards; floor %.2f s (read %.2f s, write+fsync %.2f s); device floor (O_DIRECT write) %.2f s\n' \
        "$model" "$(calc "$in_bytes / 1e9")" "$floor" "$t_read" "$t_write" "$dfloor"
    if [[ " $BENCH_MODES " == *" verify "* ]]; then # the output verify compares with, made once
        rm -rf "$BENCH_DIR/verify-$model"
        mpirun -np $W bin/fsdpmerge "$(ckpt_of "$model" "$ck")" --output "$BENCH_DIR/verify-$model" --dtype bfloat16 -q
    fi
    for mode in $BENCH_MODES; do
        for np in $BENCH_NPS; do
            walls=() peaks=()
            for ((i = 0; i < BENCH_REPEAT; i++)); do
                w=$(merge_once "$model" "$np" "$mode") || { echo "bench: fsdpmerge $mode failed on $model (np=$np)" >&2; exit 1; }
                walls+=("$w")
                peaks+=("$(cat "$BENCH_DIR"/rss.* | sort -n | tail -1)")
                rss=$(cat "$BENCH_DIR"/rss.* | sort -n | tr '\n' ' ')
            done
            wall=$(printf '%s\n' "${walls[@]}" | median)
            max_rss=$(printf '%s\n' "${peaks[@]}" | sort -n | tail -1)
            ratio=$(calc "$wall / $floor")
            gbs=$(calc "$in_bytes / $wall / 1e9")
            printf '%-14s %-7s np=%-2s %7.2f s (runs: %s)  %5.2f GB/s  %4.2fx floor  peak RSS %6.1f MiB (last run: %s KiB)\n' \
                "$model" "$mode" "$np" "$wall" "$(printf '%.2f ' "${walls[@]}")" "$gbs" "$ratio" "$(calc "$max_rss / 1024")" "$rss"
            printf '%s\t%s\t%s\t%.3f\t%.3f\t%.3f\t%.3f\t%s\t%s\t%.3f\t%.3f\n' "$model" "$mode" "$np" "$wall" "$floor" "$ratio" "$gbs" \
                "$max_rss" "$in_bytes" "$dfloor" "${LAUNCH[$np]}" >> "$DATA"
        done
    done
done

# ---- targets ----
echo
status=0
for model in "${CASES[@]}"; do
    limit=1.5
    [ "${model%-dcp}" = qwen2.5-3b ] && limit=1.25
    best=$(awk -F'\t' -v m="$model" '$1 == m && $2 != "check" && $2 != "verify" { print $6 }' "$DATA" | sort -n | head -1)
    met=$(calc "$best <= $limit")
    printf 'target %-14s wall time at the best process count <= %.2fx floor: %.2fx  %s\n' "$model" "$limit" "$best" \
        "$([ "$met" = 1 ] && echo MET || echo 'NOT MET')"
    [ "$met" = 1 ] || status=1
    # the default mode (auto: gather on one host) against the device floor (read + O_DIRECT write)
    auto_best=$(awk -F'\t' -v m="$model" '$1 == m && $2 == "auto" { print $4 / $10 }' "$DATA" | sort -n | head -1)
    if [ -n "$auto_best" ]; then
        met=$(calc "$auto_best <= 1.1")
        printf 'target %-14s default mode (auto) at its best process count <= 1.10x device floor: %.2fx  %s\n' "$model" \
            "$auto_best" "$([ "$met" = 1 ] && echo MET || echo 'NOT MET')"
        [ "$met" = 1 ] || status=1
        printf '       %-14s (for information: less Open MPI start-up, %.2fx)\n' "$model" \
            "$(awk -F'\t' -v m="$model" '$1 == m && $2 == "auto" { print ($4 - $11) / $10 }' "$DATA" | sort -n | head -1)"
    fi
    merge_best=$(awk -F'\t' -v m="$model" '$1 == m && $2 != "check" && $2 != "verify" { print $4 }' "$DATA" | sort -n | head -1)
    for cmd in check verify; do
        cbest=$(awk -F'\t' -v m="$model" -v c="$cmd" '$1 == m && $2 == c { print $4 }' "$DATA" | sort -n | head -1)
        [ -n "$cbest" ] || continue
        met=$(calc "$cbest <= $merge_best")
        printf 'target %-14s %s at its best process count at least as fast as the best merge: %.2f s vs %.2f s  %s\n' \
            "$model" "$cmd" "$cbest" "$merge_best" "$([ "$met" = 1 ] && echo MET || echo 'NOT MET')"
        [ "$met" = 1 ] || status=1
    done
    worst=$(awk -F'\t' -v m="$model" '$1 == m { print $8 }' "$DATA" | sort -n | tail -1)
    printf 'target %-14s peak RSS of every process <= 256 MiB: %.1f MiB  %s\n' "$model" "$(calc "$worst / 1024")" \
        "$([ "$worst" -le $RSS_LIMIT_KB ] && echo MET || echo 'NOT MET')"
    [ "$worst" -le $RSS_LIMIT_KB ] || status=1
done

# ---- report and plot ----
{
    echo "| model | mode | processes | wall (s) | floor (s) | ratio | device floor (s) | ratio to it | input GB/s | peak RSS (MiB) | Open MPI start-up (s) | ratio to device floor less start-up |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    awk -F'\t' '{ printf "| %s | %s | %s | %.2f | %.2f | %.2fx | %.2f | %.2fx | %.2f | %.1f | %.2f | %.2fx |\n", $1, $2, $3, $4, $5, $6, $10, $4 / $10, $7, $8 / 1024, $11, ($4 - $11) / $10 }' "$DATA"
} > "$RESULTS"
echo "results: $RESULTS"
if command -v gnuplot > /dev/null; then
    gnuplot <<GP || true
set terminal pngcairo size 1100,420 font ",10"
set output "docs/bench.png"
set datafile separator "\t"
set multiplot layout 1,2 title "fsdpmerge: ${CASES[*]} (fp32 shards, world size $W, bf16 output)"
set xlabel "processes"; set ylabel "wall time / I/O floor"; set key top right; set xtics (1,2,4); set grid
plot for [m in "${CASES[*]}"] for [mode in "${BENCH_MODES}"] \
  "< awk -F'\\t' '\$1==\"".m."\" && \$2==\"".mode."\"' $DATA" using 3:6 with linespoints title m." ".mode
set ylabel "peak RSS per process (MiB)"; set yrange [0:300]
plot for [m in "${CASES[*]}"] for [mode in "${BENCH_MODES}"] \
  "< awk -F'\\t' '\$1==\"".m."\" && \$2==\"".mode."\"' $DATA" using 3:(\$8/1024) with linespoints title m." ".mode, \
  256 with lines dt 2 lc rgb "red" title "256 MiB target"
unset multiplot
GP
    echo "plot: docs/bench.png"
fi
exit $status
