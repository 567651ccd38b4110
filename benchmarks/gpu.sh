#!/usr/bin/env bash
# GPU figures for docs/PERFORMANCE.md, as one prepared run (under 8 minutes on one H100).
#
#   benchmarks/gpu.sh            # on a CUDA machine with jax[cuda12] installed
#   benchmarks/gpu.sh --smoke    # tiny sizes on any machine (CPU too): checks the script end to end
#
# Prints a markdown table, then one JSON line with every figure.
set -euo pipefail

usage() {
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
}

smoke=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --smoke) smoke=(--smoke) ;;
    *) echo "gpu.sh: unknown argument '$arg' (see -h)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
# XLA's GPU flags that pay off for convnets: latency-hiding scheduler and autotuned convolutions
# are defaults; keep the whole memory pool so allocation never lands in a timed step.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-true}"
exec "${PYTHON:-python3}" benchmarks/gpu.py "${smoke[@]}"
