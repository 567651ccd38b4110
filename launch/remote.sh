#!/usr/bin/env bash
# Runs ON a cloud VM (each TPU worker, or the GPU VM), called over ssh by tpu_vm.sh and gpu_vm.sh:
# installs the package, starts a run detached from the ssh session, and reports its state.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: remote.sh setup tpu|cuda12
       remote.sh start [--shutdown-when-done] -- RESNET_JAX_ARGS...
       remote.sh status

setup   creates ~/venv (Python 3.12, via uv) and installs ~/resnet-jax with jax[tpu] or jax[cuda12],
        and gcsfs for gs:// paths
start   runs `~/venv/bin/resnet-jax ARGS` in the background, immune to the ssh session ending; output
        goes to ~/resnet-jax-run/train.log and the exit status to ~/resnet-jax-run/exit_code.
        --shutdown-when-done powers the VM off afterwards, unless the run stopped early (75): then
        the VM is being preempted and shuts down anyway.
status  prints "running", "exited CODE" or "idle" (never started here, or killed with the VM)
EOF
}

run_dir="$HOME/resnet-jax-run"
venv="$HOME/venv"

(($# > 0)) || { usage >&2; exit 2; }
command=$1
shift
case "$command" in
  -h | --help)
    usage
    ;;
  setup)
    [[ ${1:-} == tpu || ${1:-} == cuda12 ]] || { echo "remote.sh setup: tpu or cuda12, not '${1:-}'" >&2; exit 2; }
    # TPU and Deep Learning VM images ship Python 3.10; the package needs >= 3.11. uv brings its own.
    python3 -m pip install --quiet --user --upgrade uv
    "$HOME/.local/bin/uv" venv --quiet --allow-existing --python 3.12 "$venv"
    # gcsfs: gs:// workdirs and data through etils.epath (Orbax, metrics, TFDS). The report extra:
    # training (train) and the sweep's figures; the core install alone only runs models.
    "$HOME/.local/bin/uv" pip install --quiet --python "$venv/bin/python" "jax[$1]" gcsfs \
      -e "$HOME/resnet-jax[report]"
    ;;
  start)
    shutdown=0
    if [[ ${1:-} == --shutdown-when-done ]]; then
      shutdown=1
      shift
    fi
    [[ ${1:-} == -- ]] || { echo "remote.sh start: expected -- before the resnet-jax arguments" >&2; exit 2; }
    shift
    if [[ -f $run_dir/pid ]] && kill -0 "$(cat "$run_dir/pid")" 2>/dev/null; then
      echo "remote.sh start: a run is already going (pid $(cat "$run_dir/pid")); not starting another" >&2
      exit 1
    fi
    mkdir -p "$run_dir"
    rm -f "$run_dir/exit_code"
    cd "$HOME/resnet-jax"  # relative config paths (configs/...) resolve in the checkout
    # setsid + nohup: the run outlives the ssh session. The wrapper traps SIGTERM (a trap, not an
    # ignore, which the run would inherit) so that on preemption it outlives the run and records 75.
    # shellcheck disable=SC2016  # the inner bash expands these
    setsid nohup bash -c '
      venv=$1 run_dir=$2 shutdown=$3
      shift 3
      trap true TERM
      code=0
      "$venv/bin/resnet-jax" "$@" || code=$?
      echo "$code" >"$run_dir/exit_code.tmp" && mv "$run_dir/exit_code.tmp" "$run_dir/exit_code"
      if ((shutdown && code != 75)); then
        sudo shutdown -h now
      fi
      ' resnet-jax-run "$venv" "$run_dir" "$shutdown" "$@" >>"$run_dir/train.log" 2>&1 </dev/null &
    echo "$!" >"$run_dir/pid"
    echo "started resnet-jax $* (pid $!); log: $run_dir/train.log"
    ;;
  status)
    if [[ -f $run_dir/exit_code ]]; then
      echo "exited $(cat "$run_dir/exit_code")"
    elif [[ -f $run_dir/pid ]] && kill -0 "$(cat "$run_dir/pid")" 2>/dev/null; then
      echo "running"
    else
      echo "idle"
    fi
    ;;
  *)
    usage >&2
    exit 2
    ;;
esac
