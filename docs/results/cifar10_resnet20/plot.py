"""Draws curves.png for this folder from a run's metrics.jsonl: python plot.py RUN_DIR [OUT_DIR].

Left: training error (100-step means of the per-step batch accuracy) and test error (each
evaluation on the 10,000 test images) against steps, with the paper's ResNet-20 test error (Table 6,
8.75%, after 64k steps) as a line. Right: test error against wall time (time to accuracy).
"""

import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

PAPER_TEST_ERROR = 8.75  # He et al. 2015, Table 6, ResNet-20
WINDOW = 100


def main(run_dir: str, out_dir: str) -> None:
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  acc = np.asarray([r["train/accuracy"] for r in rows])
  n = len(acc) // WINDOW
  train_steps = (np.arange(n) + 1) * WINDOW
  train_err = 100 * (1 - acc[:n * WINDOW].reshape(n, WINDOW).mean(1))
  evals = [r for r in rows if "eval/accuracy" in r]
  eval_steps = [r["step"] for r in evals]
  eval_err = [100 * (1 - r["eval/accuracy"]) for r in evals]
  minutes = [r["perf/elapsed_s"] / 60 for r in evals]

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  ax1.plot(train_steps, train_err, "--", color="tab:blue", label="training error (100-step mean)")
  ax1.plot(eval_steps, eval_err, "o-", color="tab:blue", lw=2, label="test error (10,000 images)")
  ax1.axhline(PAPER_TEST_ERROR, color="k", lw=1, label="paper, Table 6 (64k steps): 8.75%")
  ax1.set(xlabel="step", ylabel="error (%)", ylim=(0, 50), title="ResNet-20, CIFAR-10")
  ax1.legend()
  ax2.plot(minutes, eval_err, "o-", color="tab:red", lw=2, label="ours, 2-core CPU")
  ax2.axhline(PAPER_TEST_ERROR, color="k", lw=1, label="paper: 8.75%")
  ax2.set(xlabel="wall time (minutes, compilation and evaluations included)", ylabel="test error (%)",
          ylim=(0, 50), title="Time to accuracy")
  ax2.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "curves.png"), dpi=110)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__)))
