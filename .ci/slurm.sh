#!/usr/bin/env bash
# Runs the workflow through profiles/slurm on a real single-node SLURM cluster started
# here (Debian's slurm-wlm + slurmdbd + MariaDB + munge; state, logs and configuration in a temporary
# directory), then checks the outputs and that a failing job is reported as failed.
# Needs root. Every daemon it starts is stopped by PID on exit. Prints PASS or FAIL last.
#   bash .ci/slurm.sh        (from the repository root; uses .venv/bin/python if present)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${BRAINLLM_PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
RUN_TIMEOUT="${BRAINLLM_SLURM_RUN_TIMEOUT:-300}"   # seconds per snakemake run
BASE="$(mktemp -d /tmp/brainllm-slurm.XXXXXX)"
chmod 755 "$BASE"
PIDS=()
RESULT=FAIL

log() { echo "[slurm.sh $(date +%T)] $*"; }

stop_daemons() {
    local status=$?
    set +e
    for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
        kill "${PIDS[i]}" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null
    done
    if [ "$RESULT" != PASS ]; then
        for f in "$BASE"/log/*.log; do
            [ -f "$f" ] && { echo "---- $f (last lines)"; tail -n 30 "$f"; }
        done
    fi
    # slurmd linked its configuration cache at /run/slurm/conf; it goes with $BASE
    if [ "$(readlink /run/slurm/conf 2>/dev/null)" = "$BASE/spool/conf-cache" ]; then rm -f /run/slurm/conf; fi
    rm -rf "$BASE"
    echo "slurm profile check: $RESULT"
    [ "$RESULT" = PASS ] && exit 0
    exit $(( status == 0 ? 1 : status ))
}
trap stop_daemons EXIT

# wait_for SECONDS DESCRIPTION COMMAND...: run COMMAND (an executable, 10 s at most per
# try) every second until it succeeds
wait_for() {
    local limit=$1 what=$2
    shift 2
    for _ in $(seq "$limit"); do
        if timeout 10 "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    log "timed out after ${limit}s waiting for $what"
    return 1
}

# ---- packages
if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null \
        || ! command -v munged >/dev/null || ! command -v mariadbd >/dev/null; then
    log "installing slurm-wlm slurmdbd munge mariadb-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd munge mariadb-server >/dev/null
fi
"$PYTHON" -c "import snakemake_executor_plugin_slurm" \
    || { log "snakemake-executor-plugin-slurm missing for $PYTHON: pip install -e '.[cluster]'"; exit 1; }

HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
mkdir -p "$BASE"/{log,state,spool,mysql}
export SLURM_CONF="$BASE/slurm.conf"
DB_PORT=16306 DBD_PORT=16819 CTLD_PORT=16817 SLURMD_PORT=16818

# ---- munge on its default socket (inner `srun` calls find only the defaults); reuse a
# munged that already answers there, else start one as the munge user with a fresh key.
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "using the munged already running"
else
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /etc/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        setpriv --reuid=munge --regid=munge --init-groups mungekey --create --keyfile=/etc/munge/munge.key
    fi
    setpriv --reuid=munge --regid=munge --init-groups munged -F >"$BASE/log/munged.log" 2>&1 &
    PIDS+=($!)
    wait_for 30 munged sh -c 'munge -n | unmunge'
    log "munged started"
fi

# ---- MariaDB for slurmdbd (own data directory, TCP on 127.0.0.1 only)
mariadb-install-db --no-defaults --user=root --datadir="$BASE/mysql" \
    --auth-root-authentication-method=socket --skip-test-db >"$BASE/log/mariadb-install.log" 2>&1
mariadbd --no-defaults --user=root --datadir="$BASE/mysql" --socket="$BASE/mysqld.sock" \
    --pid-file="$BASE/mysqld.pid" --bind-address=127.0.0.1 --port=$DB_PORT --skip-name-resolve \
    --log-error="$BASE/log/mariadb.log" &
PIDS+=($!)
wait_for 60 mariadb mariadb-admin --no-defaults --socket="$BASE/mysqld.sock" -u root ping
mariadb --no-defaults --socket="$BASE/mysqld.sock" -u root <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'brainllm-ci';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
log "mariadb up"

# ---- configuration: one node whose declared size fits the profile's requests
# (SlurmdParameters=config_overrides: the node is not drained for having less), with a
# fake GPU so that `gpu: 1` rules are scheduled.
cat >"$BASE/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=brainllm-ci
StorageLoc=slurm_acct_db
EOF
chmod 600 "$BASE/slurmdbd.conf"
cat >"$BASE/slurm.conf" <<EOF
ClusterName=brainllm
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
SlurmctldParameters=enable_configless
DefMemPerCPU=1000
ReturnToService=2
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStoreFlags=job_comment
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=16 RealMemory=262144 Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
echo "Name=gpu File=/dev/null" >"$BASE/gres.conf"
log "host $HOST: $CPUS cores, $MEM_MB MB real; declared 16 cores, 256 GiB, 1 fake GPU"

# ---- slurmdbd, cluster + account, slurmctld, slurmd
slurmdbd -D >"$BASE/log/slurmdbd.out" 2>&1 &
PIDS+=($!)
wait_for 60 slurmdbd sacctmgr -i list cluster
sacctmgr -i add cluster brainllm >/dev/null
sacctmgr -i add account brainllm Cluster=brainllm Description=ci Organization=ci >/dev/null
sacctmgr -i add user root Account=brainllm DefaultAccount=brainllm >/dev/null
log "slurmdbd up, cluster and account registered"
slurmctld -D -c >"$BASE/log/slurmctld.out" 2>&1 &
PIDS+=($!)
wait_for 60 slurmctld scontrol ping
# slurmd runs configless: it fetches the configuration from slurmctld and links it at
# /run/slurm/conf, where `srun` inside jobs finds it (the executor drops SLURM_CONF there).
env -u SLURM_CONF slurmd -D --conf-server "127.0.0.1:$CTLD_PORT" >"$BASE/log/slurmd.out" 2>&1 &
PIDS+=($!)
wait_for 90 "node idle" sh -c 'sinfo -h -N -o %t | grep -qx idle'
sinfo
sbatch_id="$(sbatch --parsable --wrap 'true' -o /dev/null)"
wait_for 60 "a trial job in sacct" sh -c "sacct -n -X -j $sbatch_id -o State | grep -q COMPLETED"
log "cluster ready (trial job $sbatch_id completed and is in sacct)"

# ---- the workflow through profiles/slurm
export BRAINLLM_SLURM_PARTITION=debug BRAINLLM_SLURM_ACCOUNT=brainllm
export HF_HUB_OFFLINE=1
FAST=(--seconds-between-status-checks 2 --slurm-init-seconds-before-status-checks 1 --latency-wait 5)

# run_snakemake NAME DIR ARGS...: snakemake in DIR under a hard time limit; exit status in $status
run_snakemake() {
    local name=$1 dir=$2
    shift 2
    status=0
    (cd "$dir" && timeout -s KILL "$RUN_TIMEOUT" "$PYTHON" -m snakemake \
        --profile "$REPO/profiles/slurm" "${FAST[@]}" "$@" >"$BASE/log/$name.log" 2>&1) || status=$?
    [ "$status" -ne 137 ] || { tail -n 60 "$BASE/log/$name.log"; log "$name: killed after ${RUN_TIMEOUT}s"; exit 1; }
}
fail() { tail -n 60 "$BASE/log/$1.log"; log "$1: $2"; exit 1; }

log "run 1: the miniature DAG (GPU, CPU and local rules) and a rule that fails on purpose"
MINI="$BASE/mini"
mkdir -p "$MINI"
run_snakemake mini "$MINI" --snakefile "$REPO/tests/profile_workflow/Snakefile" \
    --keep-going all results/broken/never.txt
[ "$status" -ne 0 ] || fail mini "snakemake exited 0 although rule broken fails"
grep -q "Error in rule broken" "$BASE/log/mini.log" || fail mini "the failure of rule broken was not reported"
grep -q "results/logs/broken/broken.log" "$BASE/log/mini.log" || fail mini "the log path of rule broken was not reported"
! grep "^Error in rule" "$BASE/log/mini.log" | grep -vq "rule broken:" || fail mini "a rule other than broken failed"
for f in results/encoding/scores.txt results/contrastive/adapter.txt \
         results/features/lighthouse.txt results/features/riverferry.txt results/ingest/responses.txt; do
    [ -s "$MINI/$f" ] || fail mini "missing output $f"
done
grep -q " 1$" "$MINI/results/features/lighthouse.txt" || fail mini "features did not see gpu=1"
# what SLURM granted each rule: partition, account, and the fake GPU for GPU rules only
sacct -n -X -P -o Comment,Partition,Account,AllocTRES,State -S now-1hour >"$BASE/log/sacct.txt"
cat "$BASE/log/sacct.txt"
for rule in features encoding contrastive_lora; do
    grep "^rule_$rule" "$BASE/log/sacct.txt" | grep -q "|debug|brainllm|.*gres/gpu=1.*|COMPLETED" \
        || fail mini "$rule did not run in partition debug, account brainllm, with one GPU"
done
! grep "^rule_ingest" "$BASE/log/sacct.txt" | grep -q "gres/gpu" || fail mini "ingest (a CPU rule) was given a GPU"
[ "$(grep -c "^rule_broken.*FAILED" "$BASE/log/sacct.txt")" -eq 2 ] || fail mini "rule broken did not fail twice in SLURM"
log "run 1 passed (exit $status; outputs, GPU routing, failure report and retry checked)"

log "run 2: the demo workflow up to preprocessing"
DEMO="$BASE/demo"
mkdir -p "$DEMO"
for name in Snakefile workflow config profiles; do ln -s "$REPO/$name" "$DEMO/$name"; done
run_snakemake demo "$DEMO" --until preprocess
[ "$status" -eq 0 ] || fail demo "snakemake exited $status"
for subject in UTS01 UTS02; do
    [ -s "$DEMO/results/preprocess/sub-$subject/responses.h5" ] || fail demo "missing preprocessed responses of $subject"
done
[ "$(sacct -n -X -P -o Comment,State -S now-1hour | grep -c "^rule_preprocess.*|COMPLETED")" -eq 2 ] \
    || fail demo "preprocess did not run as two SLURM jobs"
log "run 2 passed"
RESULT=PASS
