#!/usr/bin/env bash
# He et al. 2015, Table 6 and Fig. 6 (left) in one command: ResNet-20/32/44/56/110 and plain-20/56,
# five seeds each, section 4.2's recipe (configs/sweeps/table6.py), on one GPU.
#
#   benchmarks/table6.sh [--smoke] [--source DIR | --data-dir DIR] WORKDIR
#
#   --source DIR    the official CIFAR-10 binary files (prepared offline into WORKDIR/tfds)
#   --data-dir DIR  a TFDS data_dir that already holds cifar10 (default: WORKDIR/tfds, where TFDS
#                   downloads it when online)
#   --smoke         the same script end to end in minutes on a CPU: resnet8/plain8, 2 seeds, 20 steps
#
# Before the long run it times each net's compiled step for all its seeds at once (the sweep trains
# a net's five seeds as one vectorised group) and prints the estimated total. Then it runs the sweep
# (resumable: re-run the same command after a preemption) and writes WORKDIR/summary.md (mean +- std over seeds beside the paper's
# column), summary.csv, curves.png (Fig. 6), grad_norms.png and responses.png (Fig. 7).
set -euo pipefail

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
}

smoke=0 source="" data_dir="" workdir=""
while (($# > 0)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --smoke) smoke=1; shift ;;
    --source) [[ $# -ge 2 ]] || { echo "table6.sh: --source needs a folder" >&2; exit 2; }; source=$2; shift 2 ;;
    --data-dir) [[ $# -ge 2 ]] || { echo "table6.sh: --data-dir needs a folder" >&2; exit 2; }; data_dir=$2; shift 2 ;;
    -*) echo "table6.sh: unknown option '$1' (see -h)" >&2; exit 2 ;;
    *) [[ -z $workdir ]] || { echo "table6.sh: one WORKDIR only (see -h)" >&2; exit 2; }; workdir=$1; shift ;;
  esac
done
[[ -n $workdir ]] || { usage >&2; exit 2; }

cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
resnet_jax() { "$python" -m resnet_jax.cli "$@"; }
say() { echo "table6.sh: $*" >&2; }

mkdir -p "$workdir"
data_dir=${data_dir:-$workdir/tfds}
if [[ -n $source ]]; then
  resnet_jax prepare cifar10 --source "$source" --data-dir "$data_dir" >/dev/null
fi

# The first failed member's error, from its status.json (printed when no report could be written).
FIRST_ERROR='
import json, pathlib, sys
for status in sorted(pathlib.Path(sys.argv[1]).glob("*/status.json")):
  entry = json.loads(status.read_text())
  if entry.get("status") == "failed":
    print(status.parent.name + ": " + entry.get("error", ""))
    break
'

sweep=configs/sweeps/table6.py
# The fastest options the project has that keep section 4.2's arithmetic: the training set on the
# device with batches drawn inside the compiled step, several steps per dispatch, and each net's
# seeds trained together by one vmapped step (--vectorize; each seed is still its own run).
options=(--config.data_dir="$data_dir" --config.data_on_device=True)
if ((smoke)); then
  sweep=$sweep:smoke
  options+=(--config.steps_per_dispatch=2)
  bench_steps=2
else
  options+=(--config.steps_per_dispatch=100 --config.log_every_steps=100)
  bench_steps=20
fi

# The estimate: each net's vectorised step over its seeds, timed on synthetic data
# (benchmarks/vectorized.py; one step per dispatch, so a little pessimistic).
say "timing one step of each net's seeds before the long run ..."
estimate=$("$python" - "$sweep" "$bench_steps" <<'EOF'
import sys
sys.path.insert(0, "benchmarks")
import vectorized
from resnet_jax.experiments import sweep
spec, steps = sys.argv[1], int(sys.argv[2])
members = sweep.load_members(spec, {})
total, lines = 0.0, []
for model in dict.fromkeys(m.config.model for m in members):
  mine = [m for m in members if m.config.model == model]
  r = vectorized.measure(model, len(mine), mine[0].config.batch_size, steps, rounds=1)
  ms = r["group_step_ms"]
  seconds = ms / 1e3 * mine[0].config.total_steps
  total += seconds
  lines.append(f"  {model}: {ms:.2f} ms per step of {len(mine)} seeds together x "
               f"{mine[0].config.total_steps} steps = {seconds / 3600:.2f} h")
print("\n".join(lines + [f"estimated total: {total / 3600:.2f} h of training (plus compilation, "
                         "evaluations and checkpoints)"]))
EOF
)
echo "$estimate" >&2
echo "$estimate" >"$workdir/estimate.txt"

say "running the sweep (resumable) into $workdir"
status=0
resnet_jax sweep --config "$sweep" --workdir "$workdir" --vectorize "${options[@]}" || status=$?
if [[ -f $workdir/summary.md ]] && ((status == 0 || status == 1)); then  # 1: a member failed
  say "report: $workdir/summary.md, curves.png (Fig. 6), responses.png (Fig. 7)"
elif ((status == 1)); then  # no report: every member failed
  first=$("$python" -c "$FIRST_ERROR" "$workdir")
  say "every member failed: ${first:-see $workdir/*/status.json}; no report was written"
fi
exit "$status"
