# Shared by tpu_vm.sh and gpu_vm.sh (sourced, not run): printing or running commands, shipping this
# checkout, and the on-VM paths that remote.sh uses.
# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables set here are read by the scripts that source this file

# Where remote.sh keeps things on the VM, relative to the remote home directory.
REMOTE_SRC="resnet-jax"              # the unpacked checkout
REMOTE_TARBALL="resnet-jax.tar.gz"   # what setup copies over
REMOTE_LOG="resnet-jax-run/train.log"

# Exit codes of the runs (resnet-jax train/sweep) that `watch` acts on.
EXIT_DONE=0
EXIT_STOPPED_EARLY=75  # SIGTERM (preemption notice): a checkpoint was saved; re-running resumes

dry_run=0

die() {
  echo "${0##*/}: error: $*" >&2
  exit 2
}

say() {
  echo "${0##*/}: $*" >&2
}

# The VM scripts' subcommand ($1): usage for -h, an error for a missing or unknown one; $2 names a
# command of the sourcing script's own (tpu_vm.sh: check). `usage` is the sourcing script's.
check_command() {
  case "$1" in
    "") usage >&2; exit 2 ;;
    -h | --help) usage; exit 0 ;;
    create | setup | run | watch | logs | delete) ;;
    *)
      [[ -n ${2:-} && $1 == "$2" ]] ||
        die "unknown command '$1'; one of create, setup, run, watch, logs, delete${2:+, $2} (see -h)"
      ;;
  esac
}

# One word quoted for bash, as a person would: bare when safe, else in single (or double) quotes.
quote_word() {
  local word=$1 sq="'"
  if [[ -n $word && $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$word"
  elif [[ $word =~ ^(--[A-Za-z0-9-]+=)(.+)$ ]]; then  # --flag='a value', as written by hand
    printf '%s' "${BASH_REMATCH[1]}"
    quote_word "${BASH_REMATCH[2]}"
  elif [[ $word != *"$sq"* ]]; then
    printf "'%s'" "$word"
  elif [[ $word != *[\$\`\"\\!]* ]]; then
    printf '"%s"' "$word"
  else
    printf "'%s'" "${word//$sq/$sq\\$sq$sq}"
  fi
}

# The command, shell-quoted, as one line: what --dry-run prints and what can be pasted back.
quoted() {
  local words=() word
  for word in "$@"; do
    words+=("$(quote_word "$word")")
  done
  echo "${words[*]}"
}

# Runs a command, or prints it under --dry-run.
run() {
  if ((dry_run)); then
    quoted "$@"
  else
    "$@"
  fi
}

# Runs a command for its output (stdout); under --dry-run prints it instead.
query() {
  if ((dry_run)); then
    quoted "$@"
  else
    "$@"
  fi
}

# A gzipped tarball of this checkout (no VCS data, virtual environments or run directories), in a
# fresh temporary directory removed when the script exits.
pack_checkout() {
  local repo
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [[ -z ${TARBALL:-} ]]; then
    local tmp
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064  # expand now: the trap must remove this directory
    trap "rm -rf '$tmp'" EXIT
    TARBALL="$tmp/$REMOTE_TARBALL"
  fi
  run tar -czf "$TARBALL" -C "$repo" --exclude-vcs --exclude=./.venv --exclude=./venv \
    --exclude=./runs --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache .
}

# The shell command that unpacks the tarball on a VM and installs it with `jax[$1]`. It unpacks over
# the old checkout rather than deleting it: a relative --workdir (runs/...) lives inside it.
remote_setup_command() {
  echo "mkdir -p ~/$REMOTE_SRC && tar -xzf ~/$REMOTE_TARBALL -C ~/$REMOTE_SRC" \
    "&& bash ~/$REMOTE_SRC/launch/remote.sh setup $1"
}

# The shell command that starts `resnet-jax ARGS` detached on a VM (remote.sh start [FLAGS] -- ARGS).
remote_start_command() {
  local flags=()
  while (($# > 0)) && [[ $1 != -- ]]; do
    flags+=("$1")
    shift
  done
  shift
  echo "bash ~/$REMOTE_SRC/launch/remote.sh start" "${flags[@]}" "-- $(quoted "$@")"
}

remote_status_command() {
  echo "bash ~/$REMOTE_SRC/launch/remote.sh status"
}

remote_logs_command() {
  echo "tail -n 200 -F ~/$REMOTE_LOG"
}

# The resnet-jax arguments after `--`, untouched; a leading option means the `train` command.
resnet_jax_args() {
  if (($# == 0)) || [[ $1 == -* ]]; then
    set -- train "$@"
  fi
  RESNET_JAX_ARGS=("$@")
}

# `resnet-jax compile` for the train run in RESNET_JAX_ARGS, on topology $1: the same config and
# overrides, without the workdir (compiling writes nothing). In COMPILE_ARGS.
compile_args() {
  local args=("${RESNET_JAX_ARGS[@]}")
  [[ ${args[0]} == train ]] ||
    die "check compiles a train run's step; got '${args[0]}' (pass -- train --config ...)"
  COMPILE_ARGS=(compile --topology "$1")
  local i=1
  while ((i < ${#args[@]})); do
    case "${args[i]}" in
      --workdir) i=$((i + 2)) ;;
      --workdir=*) i=$((i + 1)) ;;
      *) COMPILE_ARGS+=("${args[i]}"); i=$((i + 1)) ;;
    esac
  done
}

# Whether the arguments name a gs:// workdir: a preempted TPU VM loses its disk, so only a bucket
# keeps the checkpoints that `watch` resumes from.
has_bucket_workdir() {
  local arg prev=""
  for arg in "$@"; do
    if [[ $arg == --workdir=gs://* || ($prev == --workdir && $arg == gs://*) ]]; then
      return 0
    fi
    prev=$arg
  done
  return 1
}
