"""Re-derives this page's figures and numbers from the runs' own logs.

  python docs/results/cifar10_resnet20/plot.py [RUN_DIR ...] [--out DIR]

Each RUN_DIR holds a run's config.json and metrics.jsonl (or metrics.jsonl.gz, as stored here);
without arguments, the seeds stored beside this script (seed0/, seed1/, ...). Writes curves.png and
prints the page's tables: each seed's final test accuracy and wall time, their mean +- std, and the
test accuracy at every evaluation (mean over seeds).

curves.png, left: training error (100-step means of the per-step batch accuracy) and test error
(each evaluation) against steps, one line per seed, with the paper's ResNet-20 test error (Table 6,
8.75%, after 64k steps) as a line. Right: test error against wall time (time to accuracy).
"""

import argparse
import glob
import gzip
import json
import os
import statistics

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PAPER_TEST_ERROR = 8.75  # He et al. 2015, Table 6, ResNet-20
WINDOW = 100


def read_run(run_dir: str) -> dict:
  """A run's config and metrics rows, from metrics.jsonl or its gzipped copy."""
  path = os.path.join(run_dir, "metrics.jsonl")
  opener = open if os.path.exists(path) else gzip.open
  with opener(path if os.path.exists(path) else path + ".gz", "rt") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  with open(os.path.join(run_dir, "config.json")) as f:
    config = json.load(f)
  return {"dir": run_dir, "config": config, "rows": rows}


def summary(runs: list[dict]) -> dict:
  """Per seed: final test accuracy (%), wall minutes, last-100-step training error; mean and std."""
  seeds = []
  for run in runs:
    rows = run["rows"]
    last = rows[-1]
    acc = np.asarray([r["train/accuracy"] for r in rows[-WINDOW:]])
    seeds.append({"seed": run["config"]["seed"], "step": last["step"],
                  "test_accuracy": 100 * last["eval/accuracy"],
                  "minutes": last["perf/elapsed_s"] / 60,
                  "train_error_last100": 100 * (1 - acc.mean()),
                  "steps_per_sec": last["step"] / last["perf/elapsed_s"]})
  out = {"seeds": seeds}
  for key in ("test_accuracy", "minutes", "train_error_last100", "steps_per_sec"):
    values = [s[key] for s in seeds]
    out[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
  return out


def evaluations(runs: list[dict]) -> list[dict]:
  """Mean over seeds at each evaluation step: minutes, lr, test accuracy and loss, train error."""
  table = []
  steps = [r["step"] for r in runs[0]["rows"] if "eval/accuracy" in r]
  for step in steps:
    at = [next(r for r in run["rows"] if r["step"] == step) for run in runs]
    window = [np.mean([r["train/accuracy"] for r in run["rows"][max(0, step - WINDOW):step]])
              for run in runs]
    table.append({"step": step, "minutes": np.mean([r["perf/elapsed_s"] for r in at]) / 60,
                  "lr": at[0]["train/learning_rate"],
                  "test_accuracy": [100 * r["eval/accuracy"] for r in at],
                  "test_loss": np.mean([r["eval/loss"] for r in at]),
                  "train_error": 100 * (1 - np.mean(window))})
  return table


def plot(runs: list[dict], out_dir: str) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  colors = plt.get_cmap("tab10")
  for i, run in enumerate(runs):
    rows, seed = run["rows"], run["config"]["seed"]
    acc = np.asarray([r["train/accuracy"] for r in rows])
    n = len(acc) // WINDOW
    evals = [r for r in rows if "eval/accuracy" in r]
    eval_err = [100 * (1 - r["eval/accuracy"]) for r in evals]
    ax1.plot((np.arange(n) + 1) * WINDOW, 100 * (1 - acc[:n * WINDOW].reshape(n, WINDOW).mean(1)),
             "--", color=colors(i), lw=1, label=f"seed {seed}: training error (100-step mean)")
    ax1.plot([r["step"] for r in evals], eval_err, "o-", color=colors(i), lw=2,
             label=f"seed {seed}: test error (10,000 images)")
    ax2.plot([r["perf/elapsed_s"] / 60 for r in evals], eval_err, "o-", color=colors(i), lw=2,
             label=f"seed {seed}")
  for ax in (ax1, ax2):
    ax.axhline(PAPER_TEST_ERROR, color="k", lw=1, label="paper, Table 6 (64k steps): 8.75%")
    ax.set(ylim=(0, 50), ylabel="error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  ax1.set(xlabel="step", title=f"ResNet-20, CIFAR-10, {len(runs)} seed{'s' * (len(runs) > 1)}")
  ax2.set(xlabel="wall time (minutes, compilation and evaluations included)",
          title="Time to accuracy")
  fig.tight_layout()
  path = os.path.join(out_dir, "curves.png")
  fig.savefig(path, dpi=110)
  return path


def markdown(runs: list[dict]) -> str:
  s = summary(runs)
  lines = ["| seed | final step | test accuracy % | wall minutes (training loop) | steps/s | "
           "train err %, last 100 steps |", "|---|---|---|---|---|---|"]
  for x in s["seeds"]:
    lines.append(f"| {x['seed']} | {x['step']:,} | {x['test_accuracy']:.2f} | {x['minutes']:.1f} | "
                 f"{x['steps_per_sec']:.2f} | {x['train_error_last100']:.2f} |")
  if len(s["seeds"]) > 1:  # one seed has no spread to report
    lines.append(f"| mean +- std | | **{s['test_accuracy'][0]:.2f} +- {s['test_accuracy'][1]:.2f}** | "
                 f"{s['minutes'][0]:.1f} +- {s['minutes'][1]:.1f} | {s['steps_per_sec'][0]:.2f} | "
                 f"{s['train_error_last100'][0]:.2f} +- {s['train_error_last100'][1]:.2f} |")
  lines += ["", "| step | minutes | lr | test acc % (each seed) | test loss | train err % |",
            "|---|---|---|---|---|---|"]
  for e in evaluations(runs):
    accs = " / ".join(f"{a:.2f}" for a in e["test_accuracy"])
    lines.append(f"| {e['step']:,} | {e['minutes']:.1f} | {e['lr']:.3f} | {accs} | "
                 f"{e['test_loss']:.3f} | {e['train_error']:.2f} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="*", help="run folders (default: the seeds stored here)")
  parser.add_argument("--out", default=HERE, help="where curves.png goes")
  args = parser.parse_args(argv)
  dirs = args.runs or sorted(glob.glob(os.path.join(HERE, "seed*")))
  runs = [read_run(d) for d in dirs]
  print(markdown(runs))
  print(f"wrote {plot(runs, args.out)}")


if __name__ == "__main__":
  main()
