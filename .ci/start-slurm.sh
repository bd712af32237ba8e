#!/usr/bin/env bash
# Start a real single-node SLURM cluster (munged, slurmctld, slurmd) on this machine, as root.
# Used by CI to run the workflow through profiles/slurm for real. Idempotent: a cluster that
# already answers `sinfo` is left alone. Writes the daemons' pids to $SLURM_TEST_DIR/pids.
set -euo pipefail

SLURM_TEST_DIR=${SLURM_TEST_DIR:-/tmp/clipdrift-slurm}
mkdir -p "$SLURM_TEST_DIR"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

if sinfo -h -o '%T' 2>/dev/null | grep -q idle; then
    echo "SLURM already running"; exit 0
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))

# munge: a key owned by the munge user, its directories, the daemon as that user.
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
[ -s /etc/munge/munge.key ] || head -c 1024 /dev/urandom > /etc/munge/munge.key
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0400 /etc/munge/munge.key
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    su -s /bin/sh munge -c munged
    sleep 1
fi
munge -n | unmunge | grep -q Success

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=clipdrift-ci
SlurmctldHost=${host}
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it starts again (default 120): 10 keeps the
# requeue test short.
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MpiDefault=none
NodeName=${host} CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF

slurmctld
sleep 1
slurmd
for _ in $(seq 1 30); do
    sinfo -h -o '%T' 2>/dev/null | grep -q idle && break
    sleep 1
done
sinfo
cat /run/slurmctld.pid /run/slurmd.pid /run/munge/munged.pid 2>/dev/null > "$SLURM_TEST_DIR/pids" || true
srun -N1 hostname >/dev/null
echo "SLURM single-node cluster up on ${host} (${cpus} CPUs, ${mem_mb} MB)"
