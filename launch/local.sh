#!/usr/bin/env bash
# N processes of one resnet-jax run on this machine, joined by jax.distributed over CPU devices and
# gloo collectives: the multi-host code path (per-process batch shards, collective checkpoints,
# agreed SIGTERM stops) without a cluster. Holds no hyper-parameters: arguments go to resnet-jax.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local.sh [options] N [options] [--] [resnet-jax args...]

Starts N processes of `resnet-jax` on this machine, each with K CPU devices (default 1), joined by
jax.distributed (gloo collectives), as the processes of N hosts would be. This script's options may
come before or after N; the resnet-jax arguments start at the first argument that is not one of them
(or after `--`) and go to resnet-jax untouched; when they start with an option the command is `train`:

  launch/local.sh 2 --config configs/quickstart.py --workdir runs/two_processes
  launch/local.sh 2 eval --workdir runs/two_processes

Process 0 writes metrics and the progress bar. SIGTERM or SIGINT to this script is forwarded to every
process: they finish a step agreed between them, save one checkpoint together and exit 75.

Options:
  --devices-per-process K  CPU devices each process simulates (default 1)
  --port PORT              coordinator port on 127.0.0.1 (default: a free one)
  --dry-run                print the commands instead of running them
  -h, --help               this text

Exit status: 0 when every process finished; 75 when they stopped early (re-run to resume); otherwise
the status of the first process that failed, after the others are killed (a process whose peer died
would wait in a collective forever). Each process's pid is printed to stderr when it starts.
EOF
}

die() {
  echo "local.sh: error: $*" >&2
  exit 2
}

# `wait -n -p` (which process ended) arrived in bash 5.1.
((BASH_VERSINFO[0] > 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] >= 1))) ||
  die "needs bash >= 5.1, this is ${BASH_VERSION}"

devices=1
port=""
dry_run=0
num_processes=""
while (($# > 0)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --devices-per-process) [[ $# -ge 2 ]] || die "$1 needs a value"; devices=$2; shift 2 ;;
    --devices-per-process=*) devices=${1#*=}; shift ;;
    --port) [[ $# -ge 2 ]] || die "$1 needs a value"; port=$2; shift 2 ;;
    --port=*) port=${1#*=}; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;  # everything after it is resnet-jax's, untouched
    *)
      [[ -z $num_processes ]] || break  # the first resnet-jax argument
      num_processes=$1
      shift
      ;;
  esac
done
[[ -n $num_processes ]] || { usage >&2; exit 2; }
[[ $num_processes =~ ^[1-9][0-9]*$ ]] || die "N='$num_processes' must be a positive number of processes (see -h)"
[[ $devices =~ ^[1-9][0-9]*$ ]] || die "--devices-per-process '$devices' must be a positive integer"
if (($# == 0)) || [[ $1 == -* ]]; then
  set -- train "$@"
fi

if [[ -z $port ]]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
[[ $port =~ ^[0-9]+$ ]] || die "--port '$port' must be a port number"
if ((!dry_run)) && ! command -v resnet-jax >/dev/null; then
  die "resnet-jax is not on PATH; install the package first: pip install -e '.[train]'"
fi

# Our device count replaces any the caller's XLA_FLAGS set (the test suite simulates 8 devices).
xla_flags=$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}")
xla_flags="${xla_flags} --xla_force_host_platform_device_count=${devices}"

pids=()
# Preemption notices arrive as SIGTERM: pass ours on and let the processes agree on a step.
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT

for ((i = 0; i < num_processes; i++)); do
  env_vars=(JAX_PLATFORMS=cpu "XLA_FLAGS=${xla_flags# }" "JAX_COORDINATOR_ADDRESS=127.0.0.1:${port}"
            "JAX_NUM_PROCESSES=${num_processes}" "JAX_PROCESS_ID=${i}")
  if ((dry_run)); then
    printf '%q ' env "${env_vars[@]}" resnet-jax "$@"
    echo '&'
    continue
  fi
  env "${env_vars[@]}" resnet-jax "$@" &
  pids+=("$!")
  echo "local.sh: process ${i} of ${num_processes}: pid $!" >&2
done
((dry_run)) && exit 0

status=0
live=("${pids[@]}")
while ((${#live[@]} > 0)); do
  finished=""
  code=0
  wait -n -p finished "${live[@]}" || code=$?
  [[ -n ${finished:-} ]] || continue  # our own trap interrupted the wait; no process exited
  for j in "${!live[@]}"; do
    [[ ${live[j]} != "$finished" ]] || unset 'live[j]'
  done
  live=("${live[@]}")
  if ((code == 75)); then
    status=75
  elif ((code != 0)); then
    echo "local.sh: process with pid ${finished} exited with status ${code}; stopping the others" >&2
    kill -KILL "${live[@]}" 2>/dev/null || true
    wait || true
    exit "$code"
  fi
done
exit "$status"
