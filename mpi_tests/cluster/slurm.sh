# shellcheck shell=bash
# slurm.sh - a real one-node SLURM cluster for the tests (sourced, not run).
#
#   slurm_up DIR CPUS   writes DIR/slurm.conf (from slurm.conf.in), a munge key,
#                       starts munged, slurmctld and slurmd (as root, in the
#                       foreground of background jobs of this shell, all state,
#                       logs and sockets in DIR) and waits until the node is idle.
#                       Exports SLURM_CONF so sbatch, squeue, scontrol, srun use it.
#                       Returns non-zero (after printing the logs) when SLURM
#                       does not come up.
#   slurm_down          cancels the jobs left, stops the daemons it started (by
#                       pid) and waits for them. Safe to call twice.
#   slurm_logs          prints the tail of every daemon log.
#
# Nothing outside DIR is written: no /etc/slurm, no /etc/munge, no systemd units.
# Ports: two free TCP ports on 127.0.0.1, picked at random; all traffic is on
# the loopback interface.

FM_CLUSTER_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SLURM_DIR=""
SLURM_PIDS=()

# a TCP port nothing listens on
_slurm_free_port() {
    local p i
    for ((i = 0; i < 50; i++)); do
        p=$((20000 + RANDOM % 30000))
        if ! ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then echo "$p"; return 0; fi
    done
    return 1
}

slurm_logs() {
    local f
    [ -n "$SLURM_DIR" ] || return 0
    for f in munged.log slurmctld.log slurmd.log munged.out slurmctld.out slurmd.out; do
        [ -s "$SLURM_DIR/$f" ] || continue
        echo "---- $SLURM_DIR/$f (last 40 lines)"
        tail -40 "$SLURM_DIR/$f"
    done
}

# waits up to $2 seconds for command $1 (a string) to succeed; gives up at
# once when process $3 (the daemon being waited for) has exited
_slurm_wait() {
    local i
    for ((i = 0; i < $2 * 4; i++)); do
        eval "$1" && return 0
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then
            echo "slurm_up: the daemon (pid $3) exited"
            return 1
        fi
        sleep 0.25
    done
    return 1
}

slurm_up() {
    SLURM_DIR=$1
    local cpus=${2:-8} host addr=127.0.0.1 cport dport state
    host=$(hostname -s)
    mkdir -p "$SLURM_DIR"/{state,spool,tmp}
    chmod 755 "$SLURM_DIR"
    cport=$(_slurm_free_port) && dport=$(_slurm_free_port) || { echo "slurm_up: no free TCP port"; return 1; }
    [ "$cport" != "$dport" ] || dport=$((cport + 1))
    sed -e "s|@HOST@|$host|g" -e "s|@ADDR@|$addr|g" -e "s|@DIR@|$SLURM_DIR|g" -e "s|@CPUS@|$cpus|g" \
        -e "s|@CTLD_PORT@|$cport|g" -e "s|@SLURMD_PORT@|$dport|g" \
        "$FM_CLUSTER_LIB/slurm.conf.in" > "$SLURM_DIR/slurm.conf"
    : > "$SLURM_DIR/plugstack.conf"
    export SLURM_CONF=$SLURM_DIR/slurm.conf

    # munge: a fresh key and a private socket
    dd if=/dev/urandom of="$SLURM_DIR/munge.key" bs=1024 count=1 2>/dev/null
    chmod 400 "$SLURM_DIR/munge.key"
    munged -F -f --socket="$SLURM_DIR/munge.sock" --key-file="$SLURM_DIR/munge.key" \
        --pid-file="$SLURM_DIR/munged.pid" --log-file="$SLURM_DIR/munged.log" \
        --seed-file="$SLURM_DIR/munged.seed" > "$SLURM_DIR/munged.out" 2>&1 &
    SLURM_PIDS+=($!)
    if ! _slurm_wait "munge -S '$SLURM_DIR/munge.sock' -n 2>/dev/null | unmunge -S '$SLURM_DIR/munge.sock' >/dev/null 2>&1" 15 "${SLURM_PIDS[-1]}"; then
        echo "slurm_up: munged did not start"; slurm_logs; return 1
    fi

    # -D: foreground (this shell holds the pid), -i: ignore any old state
    slurmctld -D -i -f "$SLURM_CONF" > "$SLURM_DIR/slurmctld.out" 2>&1 &
    SLURM_PIDS+=($!)
    if ! _slurm_wait "scontrol ping 2>/dev/null | grep -q 'is UP'" 30 "${SLURM_PIDS[-1]}"; then
        echo "slurm_up: slurmctld did not come up"; slurm_logs; return 1
    fi
    slurmd -D -f "$SLURM_CONF" -N "$host" > "$SLURM_DIR/slurmd.out" 2>&1 &
    SLURM_PIDS+=($!)
    if ! _slurm_wait "sinfo -h -n '$host' -o %T 2>/dev/null | grep -qx 'idle'" 45 "${SLURM_PIDS[-1]}"; then
        state=$(sinfo -h -N -o '%N %T %E' 2>&1)
        echo "slurm_up: node $host is not idle: $state"; slurm_logs; return 1
    fi
    return 0
}

slurm_down() {
    local p i
    # jobs left: only when slurmctld (the second pid) still runs
    if [ -n "$SLURM_DIR" ] && [ ${#SLURM_PIDS[@]} -ge 2 ] && kill -0 "${SLURM_PIDS[1]}" 2>/dev/null; then
        scancel --quiet --user="$(id -un)" 2>/dev/null
        for ((i = 0; i < 40; i++)); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.25
        done
    fi
    # slurmd, slurmctld, munged: the reverse order of their start
    for ((i = ${#SLURM_PIDS[@]} - 1; i >= 0; i--)); do
        p=${SLURM_PIDS[i]}
        kill -TERM "$p" 2>/dev/null || continue
        for ((j = 0; j < 40; j++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    SLURM_PIDS=()
}
