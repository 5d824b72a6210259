#!/usr/bin/env bash
# N JAX processes on this machine (CPU, gloo collectives): the multi-host code path without a cluster.
#   launch/local_multiprocess.sh 2 --config configs/default.py:tiny --workdir /tmp/mp
# Runs the interpreter launch/python.sh finds ($PYTHON, the active venv, .venv, python3).
# Each process gets DEVICES_PER_PROCESS virtual CPU devices (default 2).
set -euo pipefail
source "$(dirname "$0")/python.sh"
n=${1:?usage: local_multiprocess.sh NUM_PROCESSES MAIN_ARGS...}; shift
workdir=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do  # --workdir=DIR or --workdir DIR
  case "${args[$i]}" in
    --workdir=*) workdir=${args[$i]#--workdir=} ;;
    --workdir) workdir=${args[$((i + 1))]:-} ;;
  esac
done
[ -n "$workdir" ] || { echo "error: pass --workdir DIR (the run directory every process shares)" >&2; exit 2; }
# Logs: WORKDIR/process_<i>.log, or LOG_DIR (a local folder; default /tmp/ecg_contrastive_logs/... for a gs:// workdir).
case "$workdir" in
  *://*) log_dir=${LOG_DIR:-${TMPDIR:-/tmp}/ecg_contrastive_logs/$(echo "$workdir" | tr -c 'A-Za-z0-9._-\n' _)} ;;
  *) log_dir=${LOG_DIR:-$workdir} ;;
esac
mkdir -p "$log_dir"
port=${PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-2}" \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" \
    "$PYTHON" -m ecg_contrastive.main --distributed "$@" >"$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do wait "${pids[$i]}" || { status=$?; echo "process $i failed: $log_dir/process_$i.log" >&2; }; done
tail -n 20 "$log_dir/process_0.log"
exit $status
