#!/usr/bin/env bash
# A two-node Slurm cluster on this one host, CPU only, from the OS packages: munged, slurmctld and two slurmd
# (NodeName node1 and node2, one CPU each, each on its own port), all state under one directory.
# It is what tests/slurm/test_slurm.py runs the campaign on, and what a reviewer can try the scripts on.
#
#   examples/slurm/local-cluster.sh start  [STATE_DIR]   # then: export SLURM_CONF=STATE_DIR/slurm.conf
#   examples/slurm/local-cluster.sh status [STATE_DIR]
#   examples/slurm/local-cluster.sh stop   [STATE_DIR]
#
# STATE_DIR defaults to /tmp/invarlock-slurm. Ports: INVARLOCK_SLURM_PORT (default 16817) for slurmctld, the two
# following ones for the slurmd. Needs root (the daemons run as root) and, on Debian or Ubuntu,
#   apt-get install -y slurm-wlm munge
# Nothing outside STATE_DIR is touched: the munge socket and key, the config, the spool and the logs live there.
set -euo pipefail

command=${1:-}
state=$(mkdir -p "${2:-/tmp/invarlock-slurm}" && cd "${2:-/tmp/invarlock-slurm}" && pwd -P)
port=${INVARLOCK_SLURM_PORT:-16817}
conf=$state/slurm.conf
host=$(hostname -s)

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need() {
    local missing=()
    for tool in munged slurmctld slurmd sinfo scontrol; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        echo "local-cluster: ${missing[*]} not found: install Slurm and munge (Debian/Ubuntu: apt-get install -y slurm-wlm munge)" >&2
        exit 3
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "local-cluster: the daemons run as root here: run me as root" >&2
        exit 3
    fi
}

write_config() {
    mkdir -p "$state"/{spool/ctld,spool/node1,spool/node2,log,run,munge}
    chmod 700 "$state/munge"
    if [[ ! -s $state/munge/munge.key ]]; then
        dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$state/munge/munge.key"
    fi
    cat >"$conf" <<EOF
# Written by examples/slurm/local-cluster.sh: two CPU nodes on $host.
ClusterName=invarlock-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$state/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$state/spool/ctld
SlurmdSpoolDir=$state/spool/%n
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd-%n.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=15
MinJobAge=600
SlurmdTimeout=60
InactiveLimit=0
NodeName=node1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + 1)) CPUs=1 RealMemory=2000 State=UNKNOWN
NodeName=node2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + 2)) CPUs=1 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
EOF
}

running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    need
    write_config
    if ! running "$state/run/munged.pid"; then
        munged --force --socket="$state/munge/munge.socket" --key-file="$state/munge/munge.key" \
            --pid-file="$state/run/munged.pid" --log-file="$state/log/munged.log" --seed-file="$state/munge/seed"
    fi
    export SLURM_CONF=$conf
    running "$state/run/slurmctld.pid" || slurmctld -f "$conf"
    for node in node1 node2; do
        running "$state/run/slurmd-$node.pid" || slurmd -f "$conf" -N "$node"
    done
    for _ in $(seq 60); do
        if [[ $(sinfo -h -o '%t' 2>/dev/null | grep -cE '^(idle|mix|alloc)') -ge 1 ]] && \
            [[ $(sinfo -h -N -o '%N %t' 2>/dev/null | grep -cE ' (idle|mix|alloc)$') -eq 2 ]]; then
            echo "local-cluster: up (node1, node2; partition debug). Use it with:"
            echo "export SLURM_CONF=$conf"
            return 0
        fi
        sleep 1
    done
    echo "local-cluster: the nodes did not come up within 60 s; see $state/log/" >&2
    sinfo -N >&2 || true
    exit 1
}

stop() {
    local pid
    for file in "$state"/run/slurmd-*.pid "$state/run/slurmctld.pid" "$state/run/munged.pid"; do
        pid=$(cat "$file" 2>/dev/null) && kill "$pid" 2>/dev/null || true
    done
    for file in "$state"/run/*.pid; do
        pid=$(cat "$file" 2>/dev/null) || continue
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        rm -f "$file"
    done
    echo "local-cluster: stopped"
}

case $command in
    start) start ;;
    stop) stop ;;
    status) export SLURM_CONF=$conf; sinfo -N && squeue ;;
    *) usage ;;
esac
