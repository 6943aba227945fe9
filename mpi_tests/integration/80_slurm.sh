#!/usr/bin/env bash
# launch/fsdpmerge.sbatch on a real SLURM cluster: munged, slurmctld and slurmd
# started here (one node, 8 CPUs declared, everything in a temporary folder,
# see mpi_tests/cluster/slurm.sh), jobs submitted with `sbatch --wait`:
#   - the launcher chosen automatically, with srun --mpi=pmix, and with mpirun
#     inside the allocation; one task per rank and fewer tasks than ranks;
#     fsdpmerge options passed through: job COMPLETED, output byte-identical
#   - more tasks than ranks, and a corrupt rank file: job FAILED with
#     fsdpmerge's exit code, a clear message in the log, no output folder
# Not skipped: when SLURM does not come up the test fails and prints the
# daemons' logs. Needs root (CI runs as root); FSDPMERGE_SKIP_ROOT_TESTS=1
# skips it on a developer machine. The daemons are stopped on every exit
# (KEEP=1 keeps the scratch folder with the job logs).
source "$(dirname "$0")/../lib.sh"
source "$FM_ROOT/mpi_tests/cluster/slurm.sh"

if [ "$(id -u)" -ne 0 ]; then
    if [ "${FSDPMERGE_SKIP_ROOT_TESTS:-}" = 1 ]; then echo "SKIP SLURM test: not root"; exit 0; fi
    fail "SLURM test: needs root to start slurmctld/slurmd (run the tests as root, or FSDPMERGE_SKIP_ROOT_TESTS=1 to skip)"
    exit 0
fi
for b in munged slurmctld slurmd sbatch scontrol; do
    command -v "$b" > /dev/null || { fail "SLURM test: $b not installed (tools/deps.sh --test installs slurm-wlm and munge)"; exit 0; }
done

SD=$SCRATCH/slurm
cleanup() {
    slurm_down
    [ -n "${KEEP:-}" ] || rm -rf "$SCRATCH" "$OUT_LOG"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$SECONDS
if ! slurm_up "$SD" 8; then
    fail "SLURM did not come up (daemon logs above)"
    exit 0
fi
pass "SLURM 1-node cluster up (munged, slurmctld, slurmd; node idle, 8 CPUs) in $((SECONDS - t0)) s"

SBATCH=$FM_ROOT/launch/fsdpmerge.sbatch
JOBS=$SCRATCH/jobs
mkdir -p "$JOBS"
chmod 755 "$SCRATCH"

# submit NAME ENV-ASSIGNMENTS -- SBATCH-OPTIONS -- SCRIPT-ARGS: in the background;
# the job id goes to $JOBS/NAME.id, sbatch's exit status to $JOBS/NAME.rc
submit() {
    local name=$1
    shift
    local envs=() sopts=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    while [ "$1" != -- ]; do sopts+=("$1"); shift; done
    shift
    (
        env "${envs[@]}" timeout 150 sbatch --wait --parsable --chdir="$JOBS" --time=3 --job-name="fm-$name" \
            "${sopts[@]}" "$SBATCH" "$@" > "$JOBS/$name.id" 2> "$JOBS/$name.err"
        echo $? > "$JOBS/$name.rc"
    ) &
    SUBMITS+=($!)
}
SUBMITS=()

job_field() { # NAME FIELD
    scontrol show job -o "$(cat "$JOBS/$1.id")" 2>/dev/null | sed -n "s/.* $2=\([^ ]*\).*/\1/p" | head -1
}
job_log() { echo "$JOBS/fsdpmerge-$(cat "$JOBS/$1.id").log"; }
show_job() { # NAME: what to look at when a check fails
    echo "  sbatch: rc $(cat "$JOBS/$1.rc" 2>/dev/null), $(cat "$JOBS/$1.err" 2>/dev/null)"
    echo "  job: $(scontrol show job -o "$(cat "$JOBS/$1.id" 2>/dev/null)" 2>&1 | grep -o 'JobState=[^ ]* .*ExitCode=[^ ]*' | cut -c1-200)"
    tail -15 "$(job_log "$1")" 2>/dev/null | sed 's/^/  log: /'
}

# the checks of a job that must succeed: NAME OUT REF-FOLDER WHAT
check_ok() {
    local name=$1 out=$2 ref=$3 what=$4 log state code
    log=$(job_log "$name")
    state=$(job_field "$name" JobState)
    code=$(job_field "$name" ExitCode)
    if [ "$(cat "$JOBS/$name.rc")" = 0 ] && [ "$state" = COMPLETED ] && [ "$code" = 0:0 ]; then
        pass "sbatch --wait $what: job COMPLETED, exit 0:0"
    else
        fail "sbatch --wait $what: sbatch rc $(cat "$JOBS/$name.rc"), JobState=$state ExitCode=$code"
        show_job "$name"
    fi
    if cmp -s "$out/model.safetensors" "$ref/model.safetensors" && cmp -s "$out/config.json" "$ref/config.json"; then
        pass "$what: model.safetensors and config.json byte-identical to the reference"
    else
        fail "$what: output differs from $ref (job log: $log)"
        show_job "$name"
    fi
    if grep -q "fsdpmerge.sbatch: output: $out\$" "$log" && grep -q "fsdpmerge.sbatch: log: *$log\$" "$log"; then
        pass "$what: the log ends with where the output and the log are"
    else
        fail "$what: output/log locations not printed"
        tail -4 "$log"
    fi
}

# the checks of a job that must fail: NAME OUT WHAT EXIT-CODE MESSAGE-REGEX
check_failed() {
    local name=$1 out=$2 what=$3 want=$4 msg=$5 log state code
    log=$(job_log "$name")
    state=$(job_field "$name" JobState)
    code=$(job_field "$name" ExitCode)
    if [ "$(cat "$JOBS/$name.rc")" = "$want" ] && [ "$state" = FAILED ] && [ "$code" = "$want:0" ]; then
        pass "sbatch --wait $what: job FAILED with exit $want"
    else
        fail "sbatch --wait $what: sbatch rc $(cat "$JOBS/$name.rc"), JobState=$state ExitCode=$code (want FAILED, $want:0)"
        show_job "$name"
    fi
    if grep -qE "$msg" "$log" && [ ! -e "$out" ] && no_leftovers "$(dirname "$out")"; then
        pass "$what: the log says why ('$(grep -oE "$msg" "$log" | head -1)'), no output folder left"
    else
        fail "$what: message /$msg/ not in $log, or an output folder was left"
        show_job "$name"
    fi
}

# a checkpoint whose rank 2 is truncated (the other files linked)
bad=$SCRATCH/bad/global_step_1
mkdir -p "$bad/actor"
for f in "$FIX/fsdp2_ws4_tied/global_step_1/actor/"*; do ln -s "$f" "$bad/actor/"; done
rm "$bad/actor/model_world_size_4_rank_2.pt"
head -c 20000 "$FIX/fsdp2_ws4_tied/global_step_1/actor/model_world_size_4_rank_2.pt" > "$bad/actor/model_world_size_4_rank_2.pt"

t0=$SECONDS
O=$SCRATCH/out
submit auto -- --ntasks=4 -- "$FIX/fsdp2_ws4_tied/global_step_1" "$O/auto" --progress none
submit mpirun FSDPMERGE_LAUNCHER=mpirun -- --ntasks=8 --nodes=1 -- "$FIX/fsdp2_ws8_uneven_bf16/global_step_1" "$O/mpirun" --progress lines
submit srun FSDPMERGE_LAUNCHER=srun -- --ntasks=3 -- "$FIX/fsdp1_ws4_mesh/global_step_1/actor" "$O/srun" --dtype float32 --mode gather --progress none
submit toomany -- --ntasks=8 -- "$FIX/fsdp2_ws4_tied/global_step_1" "$O/toomany"
submit corrupt -- --ntasks=4 -- "$bad" "$O/corrupt" --progress none
wait "${SUBMITS[@]}" # not a bare wait: the daemons are background jobs too
echo "     (5 jobs ran in $((SECONDS - t0)) s)"

check_ok auto "$O/auto" "$FIX/fsdp2_ws4_tied/reference/bf16" "default launcher, 4 tasks"
grep -qE "launcher (srun|mpirun) \(auto: " "$(job_log auto)" && pass "auto launcher: the log names the launcher chosen and why" \
    || { fail "auto launcher: not named in the log"; show_job auto; }

check_ok mpirun "$O/mpirun" "$FIX/fsdp2_ws8_uneven_bf16/reference/bf16" "FSDPMERGE_LAUNCHER=mpirun, 8 tasks"
if grep -q '^+ mpirun -np 8 ' "$(job_log mpirun)" && ! grep -q -- '--oversubscribe' "$(job_log mpirun)"; then
    pass "mpirun inside the allocation: mpirun -np 8, no --oversubscribe (the allocation gives the slots)"
else
    fail "mpirun inside the allocation: $(grep '^+' "$(job_log mpirun)")"
fi

check_ok srun "$O/srun" "$FIX/fsdp1_ws4_mesh/reference/fp32" "FSDPMERGE_LAUNCHER=srun, 3 tasks for 4 ranks, --dtype float32"
if grep -q '^+ srun --ntasks=3 --mpi=pmix ' "$(job_log srun)" && grep -q 'note: 3 tasks for world size 4' "$(job_log srun)"; then
    pass "srun launcher: srun --ntasks=3 --mpi=pmix, fewer tasks than ranks noted"
else
    fail "srun launcher: $(grep -E '^\+|note' "$(job_log srun)")"
fi

check_failed toomany "$O/toomany" "8 tasks for world size 4" 2 "submit with sbatch --ntasks=4"
check_failed corrupt "$O/corrupt" "a truncated rank file" 4 "model_world_size_4_rank_2.pt"

# the daemons go away
pids=("${SLURM_PIDS[@]}")
slurm_down
alive=""
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
[ -z "$alive" ] && [ ${#pids[@]} -eq 3 ] && pass "munged, slurmctld and slurmd stopped" || fail "daemons still running:$alive"
