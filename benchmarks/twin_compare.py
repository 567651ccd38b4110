"""Ours vs the PyTorch twin on the same batches: training-loss curves and final test accuracy.

Each member is a CIFAR-10 preset (`configs/cifar10.py:MODEL`, section 4.2's recipe: no warm-up for
ResNet-20/56), trained for STEPS steps at a constant lr of 0.1 (the paper's first drop is at 32k),
once by `resnet-jax train` and once by `benchmarks/torch_twin.py`, for each seed:

  python benchmarks/twin_compare.py --workdir W --out docs/results/twin --config.data_dir=DIR \\
      [--runs resnet20:1000:0,1,2/resnet56:500:0]

Finished members are skipped on a re-run (ours resumes from its checkpoints), so the command can be
stopped and run again. Writes OUT/twin.json (every step's loss and accuracy, both sides), OUT/twin.png
(10-step means of the training loss) and prints a markdown table.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WINDOW = 10  # steps per point of the curves


def _ours(model, steps, seed, workdir, overrides):
  run_dir = os.path.join(workdir, f"ours-{model}-seed{seed}")
  metrics = os.path.join(run_dir, "metrics.jsonl")
  cmd = [sys.executable, "-m", "resnet_jax.cli", "train", "--config",
         os.path.join(ROOT, f"configs/cifar10.py:{model}"), "--workdir", run_dir,
         f"--config.total_steps={steps}", "--config.lr_decay_steps=()", f"--config.seed={seed}",
         f"--config.eval_every_steps={steps}", "--config.checkpoint_every_steps=100",
         "--config.log_every_steps=100", *overrides]
  subprocess.run(cmd, check=True)
  with open(metrics) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {"loss": [r["train/loss"] for r in rows], "accuracy": [r["train/accuracy"] for r in rows],
          "eval_accuracy": rows[-1]["eval/accuracy"], "eval_loss": rows[-1]["eval/loss"]}


def _twin(model, steps, seed, workdir, overrides):
  path = os.path.join(workdir, f"twin-{model}-seed{seed}.json")
  if not os.path.exists(path):
    cmd = [sys.executable, os.path.join(HERE, "torch_twin.py"), "--config",
           os.path.join(ROOT, f"configs/cifar10.py:{model}"), "--steps", str(steps),
           "--config.lr_decay_steps=()", f"--config.total_steps={steps}", f"--config.seed={seed}",
           *overrides]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    with open(path + ".tmp", "w") as f:
      f.write(out.strip().splitlines()[-1])
    os.replace(path + ".tmp", path)
  with open(path) as f:
    return json.load(f)


def windowed(values, w=WINDOW):
  v = np.asarray(values, np.float64)
  n = len(v) // w
  return (np.arange(1, n + 1) * w, v[:n * w].reshape(n, w).mean(1))


def plot(results, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  models = list(dict.fromkeys(r["model"] for r in results))
  fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
  for ax, model in zip(axes[0], models):
    for r in (r for r in results if r["model"] == model):
      for side, style, color in (("ours", "-", "C0"), ("twin", "--", "C3")):
        steps, loss = windowed(r[side]["loss"])
        label = f"{'ours (JAX)' if side == 'ours' else 'PyTorch twin'}" if r["seed"] == 0 else None
        ax.plot(steps, loss, style, color=color, lw=1.2, alpha=0.8, label=label)
    ax.set_title(f"{model}: training loss ({WINDOW}-step means), one line per seed")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


PLATEAU = 2.0  # a 10-step mean loss below this has left the start (ln 10 = 2.30 is chance)


def _leaves_plateau(loss) -> float:
  """The first step whose 10-step mean loss is below PLATEAU (nan if never)."""
  steps, means = windowed(loss)
  below = np.nonzero(means < PLATEAU)[0]
  return float(steps[below[0]]) if len(below) else float("nan")


def table(results) -> str:
  lines = ["| model | steps | seeds | side | loss, first 10 steps | peak 10-step loss | peak step loss "
           f"| first step below {PLATEAU} | loss, last 100 steps | test accuracy % |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  models = list(dict.fromkeys((r["model"], r["steps"]) for r in results))
  for model, steps in models:
    runs = [r for r in results if r["model"] == model]
    for side in ("ours", "twin"):
      first = [np.mean(r[side]["loss"][:10]) for r in runs]
      peak = [np.max(windowed(r[side]["loss"])[1]) for r in runs]
      spike = [np.max(r[side]["loss"]) for r in runs]  # one step's loss: the spike itself
      leave = [_leaves_plateau(r[side]["loss"]) for r in runs]
      last = [np.mean(r[side]["loss"][-100:]) for r in runs]
      acc = [100 * r[side]["eval_accuracy"] for r in runs]
      fmt = lambda v, d=3: (f"{np.mean(v):.{d}f} +- {np.std(v, ddof=1):.{d}f}" if len(v) > 1
                            else f"{v[0]:.{d}f}")
      lines.append(f"| {model} | {steps} | {len(runs)} | {'ours' if side == 'ours' else 'twin'} | "
                   f"{fmt(first)} | {fmt(peak)} | {fmt(spike)} | {fmt(leave, 0)} | {fmt(last)} | {fmt(acc, 2)} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="runs of both sides (resumable)")
  parser.add_argument("--out", required=True, help="where twin.json and twin.png go")
  parser.add_argument("--runs", default="resnet20:1000:0,1,2/resnet56:500:0",
                      help="MODEL:STEPS:SEEDS, '/'-separated")
  args, overrides = parser.parse_known_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  os.makedirs(args.out, exist_ok=True)
  results = []
  for spec in args.runs.split("/"):
    model, steps, seeds = spec.split(":")
    for seed in (int(s) for s in seeds.split(",")):
      print(f"== {model} seed {seed}: ours, then the twin ({steps} steps each)", file=sys.stderr,
            flush=True)
      results.append({"model": model, "steps": int(steps), "seed": seed,
                      "ours": _ours(model, int(steps), seed, args.workdir, overrides),
                      "twin": _twin(model, int(steps), seed, args.workdir, overrides)})
  with open(os.path.join(args.out, "twin.json"), "w") as f:
    json.dump(results, f)
  plot(results, os.path.join(args.out, "twin.png"))
  print(table(results))


if __name__ == "__main__":
  main()
