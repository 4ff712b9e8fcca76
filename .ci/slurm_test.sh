#!/usr/bin/env bash
# make slurm-test: run the shipped SLURM recipe (examples/slurm/reproduce.sbatch, then plot.sbatch)
# on a real, throwaway one-node SLURM cluster, on a smoke grid, and check what it wrote.
#
# Why a real cluster: the recipe depends on things only sbatch provides (the array variables that
# bptt-run turns into its shard, --export, --dependency, the job's working directory), and two
# tasks sharing one results folder is exactly what the lock files are for. A mock would test our
# idea of SLURM, not SLURM.
#
# Everything the cluster needs lives in one temporary folder: its own munge key and socket, its
# own slurm.conf (found through SLURM_CONF), state, spool, logs and results. Nothing under /etc is
# written, a munged or SLURM already running on the machine is left alone (free ports are
# picked), and every daemon started here is stopped on exit, whatever happens. The only lasting
# change is the Debian packages, installed once if missing.
#
# Needs root (apt-get, and slurmd runs as root). Exit 0 with one "skipped" line when the packages
# cannot be installed; any other problem fails. SLURM_TEST_TIMEOUT (seconds, default 900) bounds
# the wait for the jobs; SLURM_TEST_KEEP=1 keeps the temporary folder.
set -euo pipefail

START=$SECONDS
cd "$(dirname "$0")/.."
REPO=$PWD
PY="$REPO/.venv/bin/python"
TIMEOUT=${SLURM_TEST_TIMEOUT:-900}

# The smoke grid: cartpole at smoke scale is 24 runs in 8 programs (one per pole count and flow),
# so each of the 2 array tasks trains 4 programs; about a minute per task on one core.
EXPERIMENTS=cartpole
SCALE=smoke
SEEDS=2

say() { echo "slurm-test: $*"; }
skip() { say "skipped: $*"; exit 0; }
die() { say "FAILED: $*" >&2; exit 1; }

[ -x "$PY" ] || die "$PY is missing; run make install first"

# --- 1. Packages --------------------------------------------------------------------------------
have_slurm() { command -v sbatch && command -v slurmctld && command -v slurmd && command -v munged; }
if ! have_slurm >/dev/null; then
    [ "$(id -u)" = 0 ] || skip "slurm-wlm and munge are not installed, and installing them needs root"
    command -v apt-get >/dev/null || skip "slurm-wlm and munge are not installed and there is no apt-get"
    say "installing slurm-wlm and munge with apt-get"
    APT_LOG=$(mktemp /tmp/bptt-slurm-apt-XXXXXX.log)
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends slurm-wlm munge; } >"$APT_LOG" 2>&1; then
        reason=$(grep -E '^(E|W):' "$APT_LOG" | tail -n 1)
        rm -f "$APT_LOG"
        skip "apt-get could not install slurm-wlm and munge (${reason:-see apt-get output})"
    fi
    rm -f "$APT_LOG"
    have_slurm >/dev/null || die "apt-get succeeded but sbatch/slurmctld/slurmd/munged are still missing"
fi
# slurmd starts job steps as the submitting user, which only root can do.
[ "$(id -u)" = 0 ] || skip "slurmd must run as root (run make slurm-test as root, as CI does)"

# --- 2. A temporary cluster, torn down on exit ---------------------------------------------------
T=$(mktemp -d /tmp/bptt-slurm-XXXXXX)
chmod 755 "$T"   # munged refuses a socket in a folder that others cannot traverse
mkdir -p "$T/state" "$T/spool" "$T/logs"
export SLURM_CONF="$T/slurm.conf"   # every SLURM command here (and in the jobs) reads this one
MUNGED_PID='' SLURMCTLD_PID='' SLURMD_PID='' JOBS=''

# Stop a daemon we started: TERM, up to 30 s to exit (slurmctld saves its state first), then KILL.
stop() {
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

cleanup() {
    local rc=$? f ids
    set +e
    if [ "$rc" != 0 ]; then
        for f in "$T"/logs/* "$T"/slurmctld.log "$T"/slurmd.log "$T"/munged.out; do
            [ -s "$f" ] && { echo "----- $f (last 40 lines)"; tail -n 40 "$f"; }
        done
    fi
    # Jobs first, so that no job step outlives slurmd (which would orphan its processes).
    if [ -n "$JOBS" ] && [ -n "$SLURMCTLD_PID" ]; then
        IFS=, read -ra ids <<<"$JOBS"
        scancel "${ids[@]}" 2>/dev/null
        for _ in $(seq 60); do
            [ -z "$(squeue -h -j "$JOBS" -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    stop "$SLURMD_PID"
    stop "$SLURMCTLD_PID"
    stop "$MUNGED_PID"
    if [ "${SLURM_TEST_KEEP:-0}" = 1 ]; then say "kept $T"; else rm -rf "$T"; fi
    [ "$rc" != 0 ] && say "failed after $((SECONDS - START)) s"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM   # run the cleanup on Ctrl-C too

# wait_for LIMIT WHAT COMMAND...: run COMMAND every half second until it succeeds; fail after
# LIMIT seconds, or at once when one of our daemons has died (no point waiting then).
wait_for() {
    local limit=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what: not after ${limit} s"
        alive || die "$what: a daemon died"
        sleep 0.5
    done
}
alive() {
    local pid
    for pid in $MUNGED_PID $SLURMCTLD_PID $SLURMD_PID; do
        kill -0 "$pid" 2>/dev/null || { say "daemon $pid is gone"; return 1; }
    done
}

# munge: a fresh key and a private socket, so the machine's own munge (if any) is not involved.
mungekey --create --keyfile="$T/munge.key" >/dev/null 2>&1 ||
    dd if=/dev/urandom of="$T/munge.key" bs=1 count=1024 status=none
chmod 400 "$T/munge.key"
munged --foreground --key-file="$T/munge.key" --socket="$T/munge.sock" \
    --pid-file="$T/munged.pid" --log-file="$T/munged.log" --seed-file="$T/munged.seed" \
    >"$T/munged.out" 2>&1 &
MUNGED_PID=$!
wait_for 30 "munged socket" test -S "$T/munge.sock"

# slurm.conf. The node line is what slurmd detects on this machine (CPUs, sockets, memory), so the
# cluster cannot disagree with the hardware; NodeAddr/SlurmctldHost use 127.0.0.1 so no DNS is
# needed. CR_CPU makes single CPUs the unit of allocation: two tasks with --cpus-per-task=1 run
# side by side on a 2-core node. MinJobAge keeps finished jobs in scontrol for the exit codes
# (there is no accounting database here for sacct).
HOST=$(hostname -s)
NODE_LINE=$(slurmd -C | head -n 1)
case "$NODE_LINE" in NodeName=*) ;; *) die "slurmd -C printed no node line: $NODE_LINE" ;; esac
NODE_LINE="NodeName=$HOST ${NODE_LINE#NodeName=* }"
read -r CTLD_PORT SLURMD_PORT < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
cat >"$SLURM_CONF" <<EOF
ClusterName=bptt-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$T/munge.sock
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=3600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$NODE_LINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=bptt Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -D -f "$SLURM_CONF" >"$T/slurmctld.out" 2>&1 &
SLURMCTLD_PID=$!
slurmd -D -f "$SLURM_CONF" >"$T/slurmd.out" 2>&1 &
SLURMD_PID=$!
node_idle() { [ "$(sinfo -h -n "$HOST" -o %T 2>/dev/null)" = idle ]; }
wait_for 60 "node $HOST idle in sinfo" node_idle
say "one-node cluster up ($NODE_LINE) after $((SECONDS - START)) s"

# --- 3. The shipped scripts, on the smoke grid ----------------------------------------------------
# Command-line options override the scripts' #SBATCH lines; the environment chooses the grid.
OUT="$T/results"
COMMON=(--parsable --chdir="$REPO" --time=00:30:00)
ARRAY=$(sbatch "${COMMON[@]}" --array=1-2 --cpus-per-task=1 --mem=2G \
    --output="$T/logs/%x-%A_%a.out" \
    --export="ALL,EXPERIMENTS=$EXPERIMENTS,SCALE=$SCALE,SEEDS=$SEEDS,OUT=$OUT" \
    examples/slurm/reproduce.sbatch)
ARRAY=${ARRAY%%;*}
JOBS=$ARRAY
PLOT=$(sbatch "${COMMON[@]}" --dependency="afterany:$ARRAY" --cpus-per-task=1 --mem=2G \
    --output="$T/logs/%x-%j.out" --export="ALL,OUT=$OUT" examples/slurm/plot.sbatch)
PLOT=${PLOT%%;*}
JOBS="$ARRAY,$PLOT"
say "submitted array $ARRAY (2 tasks, $EXPERIMENTS at $SCALE scale) and plot job $PLOT"

jobs_gone() { [ -z "$(squeue -h -j "$JOBS" -o %i)" ]; }
wait_for "$TIMEOUT" "jobs $JOBS finished" jobs_gone

# Every job (each array task, and the plot) must have completed with exit code 0. scontrol still
# knows them (MinJobAge); one line per array task.
ended=$({ scontrol -o show job "$ARRAY"; scontrol -o show job "$PLOT"; } | awk '{
    for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    id = f["ArrayTaskId"] != "" ? f["ArrayJobId"] "_" f["ArrayTaskId"] : f["JobId"]
    print id, f["JobName"], f["JobState"], f["ExitCode"]; delete f }')
while read -r line; do echo "  job $line"; done <<<"$ended"
[ "$(echo "$ended" | grep -c ' COMPLETED 0:0$')" = 3 ] || die "not every job completed with exit code 0"

# --- 4. What the jobs wrote -----------------------------------------------------------------------
"$PY" .ci/slurm_check.py --out "$OUT" --logs "$T/logs" --scale "$SCALE" --seeds "$SEEDS" \
    --tasks 2 --took $((SECONDS - START)) $EXPERIMENTS
