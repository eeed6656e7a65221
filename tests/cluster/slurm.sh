#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the `cluster` tests (tests/test_cluster.py)
# and for trying the SLURM profile by hand.  Needs root and Debian's packages
# (`make cluster-deps`).  Every wait is bounded; nothing listens beyond 127.0.0.1.
#
#   tests/cluster/slurm.sh start    munged, slurmctld, slurmd; returns when the node is idle
#                                   (idempotent: a running cluster of ours is left as it is)
#   tests/cluster/slurm.sh stop     cancels every job, stops the three daemons, removes the state
#   tests/cluster/slurm.sh status   exit 0 if the cluster answers and its node takes jobs
#
# Where things go: the configuration at /etc/slurm/slurm.conf (Snakemake's jobstep plugin
# drops $SLURM_CONF for its inner srun, so it must be at the default path; a file there that
# this script did not write is never overwritten), state, logs and pid files under
# $MMA_SLURM_DIR (default /tmp/mma-slurm).
#
# Status queries: there is no slurmdbd, so `sacct` does not work; Snakemake must be run with
# `--slurm-status-command squeue`, which needs MinJobAge (how long squeue still shows a finished
# job) of at least 3x `--slurm-init-seconds-before-status-checks`: MinJobAge=600 here.
# GPUs: the node declares Gres=gpu:2 backed by two character devices that are /dev/null
# (c 1 3), so GPU requests (--gpus=1, --gres=gpu:1) are scheduled, and limit concurrency, as
# on a real GPU node.  KillWait=10: scancel/time limit sends SIGTERM, then SIGKILL 10 s later.
set -euo pipefail

DIR="${MMA_SLURM_DIR:-/tmp/mma-slurm}"
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
MARK="# written by mma tests/cluster/slurm.sh"
WAIT_S="${MMA_SLURM_WAIT_S:-30}"
MUNGE_PID=/run/munge/munged.pid

log() { echo "slurm.sh: $*" >&2; }
die() { log "$*"; exit 1; }

need() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (the daemons and /etc/slurm need it)"
  for b in munged slurmctld slurmd scontrol sinfo squeue; do
    command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || die "$b not found: run \`make cluster-deps\` (apt-get install slurm-wlm munge)"
  done
  export PATH="$PATH:/usr/sbin"
}

ours() { [ ! -e "$1" ] || head -n1 "$1" | grep -qF "$MARK"; }

write_conf() {
  local host node mem
  host="$(hostname -s)"
  # the node line as slurmd measures it (CPUs, sockets, cores, threads, memory)
  node="$(slurmd -C | head -n1 | sed -e "s/^NodeName=[^ ]*/NodeName=$host/")"
  ours "$CONF" || die "$CONF was not written by this script; not overwriting it"
  ours "$GRES_CONF" || die "$GRES_CONF was not written by this script; not overwriting it"
  mkdir -p /etc/slurm "$DIR/state" "$DIR/spool" "$DIR/dev"
  for i in 0 1; do [ -c "$DIR/dev/gpu$i" ] || mknod "$DIR/dev/gpu$i" c 1 3; done
  cat > "$CONF.tmp" <<EOF
$MARK: a one-node test cluster, state in $DIR
ClusterName=mma-test
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
MinJobAge=600
KillWait=10
DefMemPerCPU=1000
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
GresTypes=gpu
$node NodeAddr=127.0.0.1 NodeHostname=$host Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
  printf '%s\nNodeName=%s Name=gpu File=%s/dev/gpu[0-1]\n' "$MARK" "$host" "$DIR" > "$GRES_CONF"
}

munge_up() { [ -f "$MUNGE_PID" ] && kill -0 "$(cat "$MUNGE_PID")" 2>/dev/null; }

start_munge() {
  munge_up && return 0
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then mungekey --create --keyfile=/etc/munge/munge.key; fi
  chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge/munge.key
  chmod 0755 /run/munge
  chmod 0400 /etc/munge/munge.key
  runuser -u munge -- munged --pid-file="$MUNGE_PID"
  for _ in $(seq $((WAIT_S * 10))); do munge -n </dev/null >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "munged did not answer within ${WAIT_S} s"
}

node_ready() {  # the node is up and takes jobs
  local state
  state="$(timeout -k 2 5 sinfo -h -N -o '%T' 2>/dev/null | head -n1)" || return 1
  case "$state" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  need
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && munge_up && node_ready; then
    log "already running (state in $DIR)"
    return 0
  fi
  stop_daemons
  write_conf
  start_munge
  rm -rf "$DIR/state"/* "$DIR/spool"/*
  slurmctld -i  # daemonises; -i: ignore any leftover state
  slurmd
  for _ in $(seq $((WAIT_S * 10))); do
    if node_ready; then log "up: node $(hostname -s), state in $DIR"; return 0; fi
    sleep 0.1
  done
  tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 2>/dev/null || true
  die "the node did not become idle within ${WAIT_S} s"
}

stop_pid() {  # stop_pid PIDFILE NAME: SIGTERM, then SIGKILL after a bounded wait
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "$2 ($pid) ignored SIGTERM for 10 s: SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$f"
}

stop_daemons() {
  if alive "$DIR/slurmctld.pid"; then
    timeout -k 2 10 scancel --quiet --user=root 2>/dev/null || true
    # the cancelled jobs' processes end (SIGTERM, SIGKILL after KillWait) before slurmd goes
    for _ in $(seq 150); do
      [ -z "$(timeout -k 2 5 squeue -h -t RUNNING,COMPLETING,PENDING -o %i 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
  stop_pid "$DIR/slurmd.pid" slurmd
  stop_pid "$DIR/slurmctld.pid" slurmctld
}

stop() {
  need
  stop_daemons
  stop_pid "$MUNGE_PID" munged
  rm -rf "$DIR"
  log "stopped"
}

status() {
  export PATH="$PATH:/usr/sbin"
  alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && node_ready
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
