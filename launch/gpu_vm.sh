#!/usr/bin/env bash
# A Compute Engine GPU VM with gcloud: create, install this checkout with jax[cuda12], run resnet-jax
# (one process drives every GPU of the VM) and power the VM off when the run ends; `watch` restarts
# a preempted spot VM and resumes. Holds no hyper-parameters: arguments after `--` go to resnet-jax.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/gpu_vm.sh COMMAND --name NAME [options] [-- resnet-jax args...]

Commands:
  check    before renting: compile the run's exact step for --machine-type's GPUs here, on this
           machine's CPU (resnet-jax compile; needs the gpu extra): memory fit, FLOPs, all-reduce,
           an images/s estimate; exits 0 fits, 1 does not fit, 2 bad input (a machine type without
           a known GPU, e.g. n1 with --gpu: the known ones are listed). --name is not needed
  create   create the VM (Deep Learning VM image with the NVIDIA driver; --spot for spot capacity)
  setup    copy this checkout to the VM; install it with jax[cuda12] in ~/venv
  run      start `resnet-jax ARGS` on the VM, detached; log in ~/resnet-jax-run/train.log. The VM
           powers itself off when the run ends (finished or failed), so it stops costing GPU time
  watch    keep the run going until it finishes: start the VM again after a spot preemption and
           resume from the workdir's newest checkpoint (create, setup and run happen here too if the
           VM does not exist yet)
  logs     follow the run's log; Ctrl-C stops following, not the run
  delete   delete the VM and its disk

Options:
  --name NAME            VM name (required)
  --zone ZONE            default: gcloud's compute/zone
  --project PROJECT      default: gcloud's core/project
  --machine-type TYPE    default n1-standard-8
  --gpu TYPE             default nvidia-tesla-t4 (nvidia-tesla-v100, nvidia-l4, ...); "none" for
                         machine types that come with their GPUs (a2-*, a3-*, g2-*)
  --gpu-count N          default 1
  --image-family FAMILY  default common-cu128-ubuntu-2204-nvidia-570 (project deeplearning-platform-release)
  --disk-size SIZE       boot disk, default 200GB
  --spot                 spot capacity: cheaper; preemption stops the VM (its disk is kept)
  --poll SECONDS         watch: time between checks (default 60)
  --dry-run              print the commands instead of running them
  -h, --help             this text

The resnet-jax arguments after `--` start with its command (train, sweep, eval); a leading option
means train. Example:

  launch/gpu_vm.sh watch --name c10 --zone us-central1-a --spot -- \
      train --config configs/cifar10.py:resnet56 --workdir runs/resnet56

`watch` acts on the run's exit status: 0 finished (watch stops the VM and exits 0); 75 stopped early
by SIGTERM after saving a checkpoint (re-run, resuming); anything else is a failure: watch exits with
that status (1 non-finite loss, 2 bad input; see the log).
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

name="" zone="" project="" machine="n1-standard-8" gpu="nvidia-tesla-t4" gpu_count=1
image_family="common-cu128-ubuntu-2204-nvidia-570" disk="200GB" spot=0 poll=60
while (($# > 0)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --name | --zone | --project | --machine-type | --gpu | --gpu-count | --image-family | --disk-size | --poll)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --name) name=$2 ;;
        --zone) zone=$2 ;;
        --project) project=$2 ;;
        --machine-type) machine=$2 ;;
        --gpu) gpu=$2 ;;
        --gpu-count) gpu_count=$2 ;;
        --image-family) image_family=$2 ;;
        --disk-size) disk=$2 ;;
        --poll) poll=$2 ;;
      esac
      shift 2
      ;;
    --spot) spot=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) die "unknown option '$1' (resnet-jax arguments go after --; see -h)" ;;
  esac
done
[[ -n $name || $command == check ]] || die "--name is required (the VM's name)"
[[ $poll =~ ^[1-9][0-9]*$ ]] || die "--poll '$poll' must be a positive number of seconds"
[[ $gpu_count =~ ^[1-9][0-9]*$ ]] || die "--gpu-count '$gpu_count' must be a positive integer"
if [[ $command == run || $command == watch ]]; then
  (($# > 0)) || die "$command needs the resnet-jax arguments after --, e.g. -- train --config ... --workdir ..."
fi
resnet_jax_args "$@"

where=()
[[ -z $zone ]] || where+=("--zone=$zone")
[[ -z $project ]] || where+=("--project=$project")

vm_ssh() {
  run gcloud compute ssh "$name" "${where[@]}" "--command=$1"
}

# RUNNING, TERMINATED (stopped: preempted, or powered off after the run), STAGING, ...; empty when
# the VM does not exist.
vm_status() {
  query gcloud compute instances describe "$name" "${where[@]}" "--format=value(status)" 2>/dev/null || true
}

create() {
  local extra=()
  [[ $gpu == none ]] || extra+=("--accelerator=type=$gpu,count=$gpu_count")
  # Spot VMs stop rather than vanish when preempted: the disk, with the checkpoints, stays.
  ((spot)) && extra+=(--provisioning-model=SPOT --instance-termination-action=STOP)
  # GPU VMs cannot live-migrate, hence TERMINATE on host maintenance; cloud-platform scope for gs://.
  run gcloud compute instances create "$name" "${where[@]}" "--machine-type=$machine" "${extra[@]}" \
    --maintenance-policy=TERMINATE "--image-family=$image_family" \
    --image-project=deeplearning-platform-release "--boot-disk-size=$disk" \
    --metadata=install-nvidia-driver=True --scopes=cloud-platform
}

setup() {
  pack_checkout
  run gcloud compute scp "$TARBALL" "$name:$REMOTE_TARBALL" "${where[@]}"
  vm_ssh "$(remote_setup_command cuda12)"
}

start_run() {
  vm_ssh "$(remote_start_command --shutdown-when-done -- "${RESNET_JAX_ARGS[@]}")"
}

watch() {
  if ((dry_run)); then
    echo "# every ${poll} s: the VM's status, then the run's"
    vm_status
    vm_ssh "$(remote_status_command)"
    echo "# when the VM does not exist:"
    create
    setup
    start_run
    echo "# when it is stopped (TERMINATED): start it, then read the run's status as above"
    run gcloud compute instances start "$name" "${where[@]}"
    echo "# when the run stopped early (exit ${EXIT_STOPPED_EARLY}) or is not running: resume"
    start_run
    echo "# when the run finished (exit ${EXIT_DONE}): make sure the VM is off"
    run gcloud compute instances stop "$name" "${where[@]}"
    return 0
  fi
  local status run_status
  while true; do
    status=$(vm_status)
    case "$status" in
      RUNNING)
        run_status=$(vm_ssh "$(remote_status_command)" 2>/dev/null | tail -n 1) || run_status=""
        case "$run_status" in
          running) ;;
          "exited $EXIT_DONE")
            say "the run finished; stopping the VM (delete it with: $0 delete --name $name)"
            run gcloud compute instances stop "$name" "${where[@]}"
            return 0
            ;;
          "exited $EXIT_STOPPED_EARLY" | idle) say "run ${run_status}: resuming"; start_run ;;
          exited\ *) say "the run failed (${run_status}); see: $0 logs --name $name"; return "${run_status#exited }" ;;
          *) say "could not read the run's state (ssh: '${run_status}'); retrying" ;;
        esac
        ;;
      TERMINATED)
        # Powered off: preempted, or by the run itself when it ended. Start it to find out which.
        say "VM $name is stopped: starting it"
        run gcloud compute instances start "$name" "${where[@]}"
        ;;
      "")
        say "VM $name does not exist: creating it"
        create
        setup
        start_run
        ;;
      *) say "VM $name is $status; waiting" ;;
    esac
    sleep "$poll"
  done
}

case "$command" in
  check) compile_args "$machine"; run resnet-jax "${COMPILE_ARGS[@]}" ;;
  create) create ;;
  setup) setup ;;
  run) start_run ;;
  watch) watch ;;
  logs) vm_ssh "$(remote_logs_command)" ;;
  delete) run gcloud compute instances delete "$name" "${where[@]}" --quiet ;;
esac
