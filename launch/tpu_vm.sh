#!/usr/bin/env bash
# Cloud TPU VMs and slices with gcloud: create, install this checkout on every worker, run resnet-jax
# on all workers at once (jax.distributed finds the slice's workers itself), and keep a preemptible
# run going until it finishes. Holds no hyper-parameters: arguments after `--` go to resnet-jax.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh COMMAND --name NAME [options] [-- resnet-jax args...]

Commands:
  check    before renting: compile the run's exact step for --accelerator-type here, on this
           machine's CPU (resnet-jax compile; needs the tpu extra): HBM fit, FLOPs, all-reduce,
           an images/s estimate; exits 0 fits, 1 does not fit, 2 bad input. --name is not needed
  create   create the TPU VM or slice (on demand; --spot; --queued waits in a queued resource)
  setup    copy this checkout to every worker; install it with jax[tpu] in ~/venv
  run      start `resnet-jax ARGS` on every worker, detached; log in ~/resnet-jax-run/train.log
  watch    keep the run going until it finishes: when the slice is preempted, re-create it, set it
           up and re-run, which resumes from the workdir's newest checkpoint (create, setup and run
           happen here too if the TPU does not exist yet)
  logs     follow one worker's log (--worker, default 0); Ctrl-C stops following, not the run
  delete   delete the TPU VM (and its queued resource)

Options:
  --name NAME              TPU name (required)
  --zone ZONE              default: gcloud's compute/zone
  --project PROJECT        default: gcloud's core/project
  --accelerator-type TYPE  v4-8 (default), v4-32, v5litepod-8, v5p-8, v6e-8, ...
  --version VERSION        TPU runtime; default by generation: v4 tpu-ubuntu2204-base,
                           v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
  --spot                   spot capacity: cheaper, can be preempted at any time
  --queued                 ask through a queued resource (waits for capacity instead of failing)
  --worker W               logs: which worker (default 0)
  --poll SECONDS           watch: time between checks (default 60)
  --dry-run                print the commands instead of running them
  -h, --help               this text

The resnet-jax arguments after `--` start with its command (train, sweep, eval); a leading option
means train. Use a gs:// --workdir: a preempted TPU VM loses its disk, and every worker of a slice
must see the same checkpoints. Example (v4-8), checked first:

  launch/tpu_vm.sh check --accelerator-type v4-8 -- \
      train --config configs/imagenet.py:resnet50 --workdir gs://BUCKET/runs/resnet50
  launch/tpu_vm.sh watch --name r50 --zone us-central2-b --accelerator-type v4-8 --spot -- \
      train --config configs/imagenet.py:resnet50 --workdir gs://BUCKET/runs/resnet50

`watch` acts on the exit status of the run on worker 0: 0 finished (watch exits 0); 75 stopped early
by SIGTERM after saving a checkpoint (re-run, resuming); anything else is a failure: watch stops and
exits with that status (1 non-finite loss, 2 bad input; see the log).
EOF
}

# --dry-run may come before the command too (`--dry-run create ...`).
while [[ ${1:-} == --dry-run ]]; do
  dry_run=1
  shift
done
command=${1:-}
check_command "$command" check
shift

name="" zone="" project="" accelerator="v4-8" version="" spot=0 queued=0 worker=0 poll=60
while (($# > 0)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --name | --zone | --project | --accelerator-type | --version | --worker | --poll)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --name) name=$2 ;;
        --zone) zone=$2 ;;
        --project) project=$2 ;;
        --accelerator-type) accelerator=$2 ;;
        --version) version=$2 ;;
        --worker) worker=$2 ;;
        --poll) poll=$2 ;;
      esac
      shift 2
      ;;
    --spot) spot=1; shift ;;
    --queued) queued=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) die "unknown option '$1' (resnet-jax arguments go after --; see -h)" ;;
  esac
done
[[ -n $name || $command == check ]] || die "--name is required (the TPU's name)"
[[ $poll =~ ^[1-9][0-9]*$ ]] || die "--poll '$poll' must be a positive number of seconds"
if [[ $command == run || $command == watch || $command == check ]]; then
  (($# > 0)) || die "$command needs the resnet-jax arguments after --, e.g. -- train --config ... --workdir gs://..."
fi
resnet_jax_args "$@"

if [[ -z $version && $command != check ]]; then
  case "$accelerator" in
    v4-*) version=tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) version=v2-alpha-tpuv5-lite ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v6e-*) version=v2-alpha-tpuv6e ;;
    *) die "no default runtime for --accelerator-type '$accelerator'; pass --version (gcloud compute tpus tpu-vm versions list)" ;;
  esac
fi

where=()
[[ -z $zone ]] || where+=("--zone=$zone")
[[ -z $project ]] || where+=("--project=$project")

tpu_ssh() {  # tpu_ssh WORKER COMMAND
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" "--worker=$1" "--command=$2"
}

# The TPU's state: READY, CREATING, PREEMPTED, ...; for a queued resource its state (ACTIVE,
# WAITING_FOR_RESOURCES, SUSPENDED, ...); empty when it does not exist.
tpu_state() {
  if ((queued)); then
    query gcloud compute tpus queued-resources describe "$name" "${where[@]}" "--format=value(state.state)" 2>/dev/null || true
  else
    query gcloud compute tpus tpu-vm describe "$name" "${where[@]}" "--format=value(state)" 2>/dev/null || true
  fi
}

create() {
  local capacity=()
  ((spot)) && capacity+=(--spot)
  if ((queued)); then
    run gcloud compute tpus queued-resources create "$name" "--node-id=$name" "${where[@]}" \
      "--accelerator-type=$accelerator" "--runtime-version=$version" "${capacity[@]}"
    # The node exists only once the queued resource is ACTIVE; setup and run need it.
    if ((dry_run)); then
      echo "# then, every ${poll} s until ACTIVE:"
      tpu_state
      return 0
    fi
    local state
    until state=$(tpu_state) && [[ $state == ACTIVE ]]; do
      [[ $state != FAILED && $state != SUSPENDED ]] || die "queued resource $name is $state"
      say "queued resource $name: ${state:-not visible yet}; waiting"
      sleep "$poll"
    done
  else
    run gcloud compute tpus tpu-vm create "$name" "${where[@]}" "--accelerator-type=$accelerator" \
      "--version=$version" "${capacity[@]}"
  fi
}

setup() {
  pack_checkout
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$name:$REMOTE_TARBALL" "${where[@]}" --worker=all
  tpu_ssh all "$(remote_setup_command tpu)"
}

start_run() {
  has_bucket_workdir "${RESNET_JAX_ARGS[@]}" ||
    say "warning: no gs:// --workdir; checkpoints on a TPU VM's disk are lost with the VM, and on a slice each worker sees only its own"
  tpu_ssh all "$(remote_start_command -- "${RESNET_JAX_ARGS[@]}")"
}

delete() {
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
}

recreate() {
  if ((dry_run)) || [[ -n $(tpu_state) ]]; then
    delete
  fi
  create
  setup
  start_run
}

watch() {
  if ((dry_run)); then
    echo "# every ${poll} s: the TPU's state, then the run's on worker 0"
    tpu_state
    tpu_ssh 0 "$(remote_status_command)"
    echo "# when the TPU is preempted, suspended or gone: re-create it and resume"
    recreate
    echo "# when the run stopped early (exit ${EXIT_STOPPED_EARLY}) or is not running: resume"
    start_run
    return 0
  fi
  local state status
  while true; do
    state=$(tpu_state)
    case "$state" in
      READY | ACTIVE)
        status=$(tpu_ssh 0 "$(remote_status_command)" 2>/dev/null | tail -n 1) || status=""
        case "$status" in
          running) ;;
          "exited $EXIT_DONE") say "the run finished; delete the TPU with: $0 delete --name $name"; return 0 ;;
          "exited $EXIT_STOPPED_EARLY" | idle) say "run ${status}: resuming"; start_run ;;
          exited\ *) say "the run failed (${status}); see: $0 logs --name $name"; return "${status#exited }" ;;
          *) say "could not read the run's state (ssh: '${status}'); retrying" ;;
        esac
        ;;
      "" | PREEMPTED | TERMINATED | SUSPENDED | FAILED)
        say "TPU $name is ${state:-gone}: re-creating it and resuming"
        recreate
        ;;
      *) say "TPU $name is $state; waiting" ;;
    esac
    sleep "$poll"
  done
}

case "$command" in
  check) compile_args "$accelerator"; run resnet-jax "${COMPILE_ARGS[@]}" ;;
  create) create ;;
  setup) setup ;;
  run) start_run ;;
  watch) watch ;;
  logs) tpu_ssh "$worker" "$(remote_logs_command)" ;;
  delete) delete ;;
esac
