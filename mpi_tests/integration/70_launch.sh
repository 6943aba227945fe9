#!/usr/bin/env bash
# launch/fsdpmerge-run: the world size read from fsdp_config.json or the file
# names, real merges through it (byte-identical), the printed mpirun command
# (--np, --hostfile/--host, --mca, --oversubscribe, srun), and clear errors
# (exit 2) when the world size cannot be determined or the files disagree.
source "$(dirname "$0")/../lib.sh"

RUN=$FM_ROOT/launch/fsdpmerge-run
T=$FIX/fsdp2_ws4_tied
# fmrun ARGS...: output (stdout + stderr) in $OUT_LOG
fmrun() { timeout 120 "$RUN" "$@" > "$OUT_LOG" 2>&1; }
cmdline() { grep '^+ ' "$OUT_LOG"; }
check_ref() { # what out ref
    cmp -s "$2/model.safetensors" "$3/model.safetensors" && pass "$1: byte-identical" \
        || { fail "$1: differs from $3"; tail -5 "$OUT_LOG"; }
}
# expect_error WHAT REGEX ARGS...: exit 2, the message, and no command run
expect_error() {
    local what=$1 re=$2
    shift 2
    fmrun "$@"
    local rc=$?
    if [ $rc -eq 2 ] && grep -qE -- "$re" "$OUT_LOG" && ! grep -q '^+ ' "$OUT_LOG"; then
        pass "$what: exit 2, '$(grep -oE -- "$re" "$OUT_LOG" | head -1)'"
    else
        fail "$what: exit $rc (rerun: $RUN $*)"; cat "$OUT_LOG"
    fi
}

# ---- world size detected, real merges ----
out=$SCRATCH/ws4
if fmrun "$T/global_step_1" --output "$out" --progress none; then
    grep -q "world size 4 (from fsdp_config.json), 4 processes" "$OUT_LOG" && cmdline | grep -q "^+ mpirun -np 4 .*$FM_BIN $T/global_step_1 --output $out --progress none\( *#.*\)\?\$" \
        && pass "step folder: world size 4 from fsdp_config.json, prints '+ mpirun -np 4 ... fsdpmerge CKPT ...'" \
        || { fail "step folder: printed $(cmdline)"; head -3 "$OUT_LOG"; }
    check_ref "fsdpmerge-run step folder (ws4)" "$out" "$T/reference/bf16"
else
    fail "fsdpmerge-run $T/global_step_1: exit $?"; tail -5 "$OUT_LOG"
fi

# the actor folder itself, fsdpmerge options before the checkpoint
A=$FIX/fsdp1_ws2_nomesh
out=$SCRATCH/ws2-fp32
if fmrun --dtype float32 --output "$out" --progress none "$A/global_step_1/actor"; then
    cmdline | grep -q "^+ mpirun -np 2 " && pass "actor folder given, options before it: mpirun -np 2" || fail "actor folder: $(cmdline)"
    check_ref "fsdpmerge-run actor folder, --dtype float32" "$out" "$A/reference/fp32"
else
    fail "fsdpmerge-run actor folder: exit $?"; tail -5 "$OUT_LOG"
fi

# --checkpoint_path=... / --output_path, --np fewer than W
M=$FIX/fsdp1_ws4_mesh
out=$SCRATCH/ws4-np2
if fmrun --np 2 --checkpoint_path="$M/global_step_1" --output_path "$out" --progress none; then
    grep -q "world size 4 (from fsdp_config.json), 2 processes" "$OUT_LOG" && cmdline | grep -q "^+ mpirun -np 2 " \
        && pass "--np 2 for world size 4, --checkpoint_path=...: mpirun -np 2" || fail "--np 2: $(cmdline)"
    check_ref "fsdpmerge-run --np 2 --checkpoint_path=" "$out" "$M/reference/bf16"
else
    fail "fsdpmerge-run --np 2: exit $?"; tail -5 "$OUT_LOG"
fi

# world size from the file names only (no fsdp_config.json)
E=$FIX/fsdp2_ws8_uneven_bf16
nocfg=$SCRATCH/nocfg/global_step_1
mkdir -p "$nocfg/actor"
for f in "$E/global_step_1/actor/"*; do [ "${f##*/}" = fsdp_config.json ] || ln -s "$f" "$nocfg/actor/"; done
out=$SCRATCH/ws8-names
if fmrun "$nocfg" --output "$out" --progress none; then
    grep -q "world size 8 (from file names), 8 processes" "$OUT_LOG" && cmdline | grep -q "^+ mpirun -np 8 " \
        && pass "no fsdp_config.json: world size 8 from the file names, mpirun -np 8" || fail "file names: $(head -2 "$OUT_LOG")"
    check_ref "fsdpmerge-run, world size from file names (ws8)" "$out" "$E/reference/bf16"
else
    fail "fsdpmerge-run without fsdp_config.json: exit $?"; tail -5 "$OUT_LOG"
fi

# --actor-dir critic
crit=$SCRATCH/critic/global_step_1
mkdir -p "$crit"
ln -s "$T/global_step_1/actor" "$crit/critic"
fmrun --dry-run "$crit" --actor-dir critic --output "$SCRATCH/crit-out"
[ $? -eq 0 ] && cmdline | grep -q "^+ mpirun -np 4 .* --actor-dir critic" && [ ! -e "$SCRATCH/crit-out" ] \
    && pass "--actor-dir critic: world size 4 from critic/fsdp_config.json; --dry-run runs nothing" || fail "--actor-dir critic: $(cat "$OUT_LOG")"
[ "$("$RUN" --print-world-size "$crit" --actor_dir=critic)" = 4 ] && [ "$("$RUN" --print-world-size "$nocfg")" = 8 ] \
    && pass "--print-world-size prints the world size alone" || fail "--print-world-size"

# the exit status is fsdpmerge's: the output exists (7)
mkdir -p "$SCRATCH/exists"
fmrun "$T/global_step_1" --output "$SCRATCH/exists" --progress none
rc=$?
[ $rc -eq 7 ] && pass "fsdpmerge's exit status comes back (7: output exists)" || { fail "exit status: $rc (want 7)"; tail -3 "$OUT_LOG"; }

# ---- world size that cannot be determined, or files that disagree ----
empty=$SCRATCH/empty/global_step_1
mkdir -p "$empty/actor"
cp -r "$T/global_step_1/actor/huggingface" "$empty/actor/"
expect_error "no fsdp_config.json, no rank files" "cannot determine the world size of $empty" "$empty" --output "$SCRATCH/e1"
expect_error "no actor/ sub-folder" "cannot determine the world size of $SCRATCH/critic/global_step_1" "$crit"
expect_error "checkpoint folder missing" "checkpoint folder $SCRATCH/nope does not exist" "$SCRATCH/nope"
expect_error "a file as the checkpoint" "is not a folder" "$T/global_step_1/actor/fsdp_config.json"

bad=$SCRATCH/mismatch/actor
mkdir -p "$bad"
echo '{"FSDP_version": 2, "world_size": 4}' > "$bad/fsdp_config.json"
for r in 0 1; do ln -s "$A/global_step_1/actor/model_world_size_2_rank_$r.pt" "$bad/"; done
expect_error "fsdp_config.json says 4, files say 2" "world size mismatch: .*fsdp_config.json says 4 but the files are model_world_size_2_rank_\*.pt" "$SCRATCH/mismatch"

two=$SCRATCH/two/actor
mkdir -p "$two"
for r in 0 1; do ln -s "$A/global_step_1/actor/model_world_size_2_rank_$r.pt" "$two/"; done
ln -s "$T/global_step_1/actor/model_world_size_4_rank_0.pt" "$two/"
expect_error "rank files of two world sizes" "holds rank files of several world sizes \(2,4\)" "$SCRATCH/two"

expect_error "--np more than the world size" "--np 5 is more than the world size 4" --np 5 "$T/global_step_1"
expect_error "--np 0" "--np must be a positive integer" --np 0 "$T/global_step_1"
expect_error "--world-size disagreeing with the checkpoint" "world size mismatch: --world-size 8 but the checkpoint says 4" "$T/global_step_1" --world-size 8
expect_error "no checkpoint argument" "no checkpoint given" --np 2 --dtype float32
expect_error "--mpirun that does not exist" "/nonexistent/mpirun not found" --mpirun /nonexistent/mpirun "$T/global_step_1" --output "$SCRATCH/e2"

# --shard-template: the world size from fsdp_config.json, or --world-size when there is none
tpl=$SCRATCH/tpl/global_step_1
mkdir -p "$tpl/actor"
cp -r "$T/global_step_1/actor/huggingface" "$tpl/actor/"
expect_error "--shard-template without fsdp_config.json or --world-size" "with --shard-template the rank files may be elsewhere: give --world-size W" \
    "$tpl" --shard-template "/local/model_world_size_%w_rank_%r.pt"
fmrun --dry-run "$tpl" --shard-template "/local/model_world_size_%w_rank_%r.pt" --world-size 4
[ $? -eq 0 ] && grep -q "world size 4 (from --world-size)" "$OUT_LOG" && cmdline | grep -q "^+ mpirun -np 4 .*--shard-template /local/model_world_size_%w_rank_%r.pt --world-size 4" \
    && pass "--shard-template with --world-size 4: mpirun -np 4" || fail "--shard-template --world-size: $(cat "$OUT_LOG")"

# ---- the printed command ----
printf 'localhost slots=4\n' > "$SCRATCH/hosts"
fmrun --dry-run --hostfile "$SCRATCH/hosts" --mca btl self,vader --mpirun-arg --report-bindings "$T/global_step_1" -o "$SCRATCH/o"
cmdline | grep -q -- "^+ mpirun -np 4 --hostfile $SCRATCH/hosts --bind-to none --mca btl self,vader --report-bindings $FM_BIN " \
    && ! grep -q -- --oversubscribe "$OUT_LOG" \
    && pass "--hostfile, --mca, --mpirun-arg passed to mpirun; no --oversubscribe with a hostfile" || fail "hostfile: $(cmdline)"
fmrun --dry-run --host localhost:2 --np 2 --mpirun-arg --bind-to --mpirun-arg core "$T/global_step_1"
cmdline | grep -q -- "^+ mpirun -np 2 --host localhost:2 --bind-to core $FM_BIN " && pass "--host passed; --bind-to from --mpirun-arg replaces the default" \
    || fail "--host: $(cmdline)"
# one CPU: more processes than cores, no hostfile => --oversubscribe, said so
taskset -c 0 "$RUN" --dry-run "$T/global_step_1" > "$OUT_LOG" 2>&1
cmdline | grep -q -- "^+ mpirun -np 4 --oversubscribe .*# --oversubscribe added: 4 processes, 1 cores on this machine" \
    && pass "4 processes on 1 core, no hostfile: --oversubscribe added, with the reason" || fail "oversubscribe: $(cmdline)"
taskset -c 0 "$RUN" --dry-run --np 1 "$T/global_step_1" > "$OUT_LOG" 2>&1
! grep -q -- --oversubscribe "$OUT_LOG" && fmrun --dry-run --oversubscribe --host localhost:4 "$T/global_step_1" \
    && cmdline | grep -q -- "--oversubscribe --bind-to none" && ! grep -q "# --oversubscribe" "$OUT_LOG" \
    && pass "--oversubscribe only when asked or needed" || fail "--oversubscribe flag: $(cmdline)"
fmrun --dry-run --launcher srun --np 3 "$T/global_step_1" --output "$SCRATCH/o"
cmdline | grep -q -- "^+ srun --ntasks=3 --mpi=pmix --kill-on-bad-exit=1 $FM_BIN $T/global_step_1 --output $SCRATCH/o\$" \
    && pass "--launcher srun: srun --ntasks=3 --mpi=pmix --kill-on-bad-exit=1" || fail "srun: $(cmdline)"
if [ "$(id -u)" -eq 0 ]; then
    env -u OMPI_ALLOW_RUN_AS_ROOT -u OMPI_ALLOW_RUN_AS_ROOT_CONFIRM "$RUN" --dry-run "$T/global_step_1" > "$OUT_LOG" 2>&1
    grep -q "running as root: mpirun refuses unless OMPI_ALLOW_RUN_AS_ROOT=1" "$OUT_LOG" && ! cmdline | grep -q -- --allow-run-as-root \
        && pass "as root without OMPI_ALLOW_RUN_AS_ROOT*: a note, nothing added" || fail "root note: $(cat "$OUT_LOG")"
fi
fmrun --help && grep -q "^usage: fsdpmerge-run \[launcher options\] CKPT \[fsdpmerge options\]" "$OUT_LOG" \
    && pass "--help" || fail "--help"
