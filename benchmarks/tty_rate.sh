#!/usr/bin/env bash
# The training rate with the console on a terminal, where its ticker thread redraws every second.
#
#   benchmarks/tty_rate.sh [REPO]     # REPO: a checkout to run (default: this one)
#
# Runs the quickstart with ResNet-8 for 400 steps (no evaluation, compilation cache off) under
# `script`, so stderr is a pseudo-terminal and the ticker runs as it does for a user, and prints the
# wall time and the median steady images/s from the run's metrics. To see what the ticker costs,
# alternate it with a checkout from before it (git worktree add /tmp/before c2279ed) on a quiet
# machine: `for i in 1 2 3; do benchmarks/tty_rate.sh /tmp/before; benchmarks/tty_rate.sh; done`.
set -euo pipefail
repo=$(cd "${1:-$(dirname "$0")/..}" && pwd)
python=${PYTHON:-python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$repo"
export PYTHONPATH="$repo" RESNET_JAX_COMPILATION_CACHE=off
t0=$(date +%s.%N)
script -qec "$python -m resnet_jax.cli train --config configs/quickstart.py --workdir $work/run \
  --config.model=resnet8 --config.total_steps=400 --config.lr_decay_steps='()' \
  --config.num_devices=1 --config.log_every_steps=20 --config.eval_every_steps=0 \
  --config.checkpoint_every_steps=200" /dev/null > /dev/null 2>&1
t1=$(date +%s.%N)
"$python" - "$work/run/metrics.jsonl" "$t0" "$t1" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
rates = [r["perf/images_per_sec"] for r in rows if "perf/images_per_sec" in r][2:]
wall = float(sys.argv[3]) - float(sys.argv[2])
print(f"wall {wall:.1f} s  steady {statistics.median(rates):.0f} images/s  "
      f"training loop {rows[-1]['perf/elapsed_s']:.1f} s")
PY
