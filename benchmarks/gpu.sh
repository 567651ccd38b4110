#!/usr/bin/env bash
# GPU figures for docs/PERFORMANCE.md, as one prepared run (under 8 minutes on one H100).
#
#   benchmarks/gpu.sh            # on a CUDA machine with jax[cuda12] installed
#   benchmarks/gpu.sh --smoke    # tiny sizes on any machine (CPU too): checks the script end to end
#   benchmarks/gpu.sh --check h100-1   # before renting: every case compiled for that GPU, here
#
# Prints a markdown table, then one JSON line with every figure. --check exits 1 if a case does not fit.
set -euo pipefail

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
}

smoke=()
check=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --smoke) smoke=(--smoke) ;;
    --check) [[ $# -ge 2 ]] || { echo "gpu.sh: --check needs a GPU machine, e.g. h100-1" >&2; exit 2; }
             check=(--check "$2"); shift ;;
    *) echo "gpu.sh: unknown argument '$1' (see -h)" >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
# XLA's GPU flags that pay off for convnets: latency-hiding scheduler and autotuned convolutions
# are defaults; keep the whole memory pool so allocation never lands in a timed step.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-true}"
exec "${PYTHON:-python3}" benchmarks/gpu.py "${smoke[@]}" "${check[@]}"
