"""The recipe's check on the paper's 45k/5k split: validation accuracy, never the test set's.

  python docs/results/cifar10_resnet20/validation.py [RUN_DIR ...]

Each RUN_DIR holds a run trained with `--config.validation_split=5000` (its config.json and
metrics.jsonl, or metrics.jsonl.gz as stored here); without arguments, the runs stored in
validation/ beside this script. Prints the page's tables: each recipe (read from the run's own
config) with its validation accuracy at the final step, and the validation accuracy at every
evaluation. The recipe the preset uses was to be kept only if it beats the paper's schedule given
the same number of steps, on these 5,000 held-out training images.
"""

import argparse
import glob
import importlib.util
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# plot.py beside this script (this folder is not a package): its read_run and WINDOW.
_spec = importlib.util.spec_from_file_location("cifar10_resnet20_plot", os.path.join(HERE, "plot.py"))
plot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot)


def recipe(config: dict) -> str:
  """The schedule and regularisers that tell the recipes apart, from a run's config."""
  if config["lr_schedule"] == "step":
    at = "/".join(f"{s:,}" for s in config["lr_decay_steps"])
    schedule = f"lr {config['learning_rate']:g}, /{1 / config['lr_decay_factor']:g} at {at}"
  else:
    schedule = f"lr {config['learning_rate']:g}, {config['lr_schedule']} decay to 0"
  if config["warmup_mode"] == "linear" and config["warmup_steps"]:
    schedule = f"{config['warmup_steps']}-step linear warm-up, " + schedule
  momentum = "Nesterov" if config["nesterov"] else "heavy-ball"
  return (f"{schedule}, {momentum} {config['momentum']:g}, wd {config['weight_decay']:g}, "
          f"label smoothing {config['label_smoothing']:g}")


def check(run: dict) -> None:
  """Refuses a run that did not hold out a validation split: its figures would be test figures."""
  held_out = run["config"].get("validation_split", 0)
  if not held_out:
    raise SystemExit(f"{run['dir']}: validation_split is 0, so its evaluations are on the test set; "
                     "this page compares recipes on held-out training images only (train with "
                     "--config.validation_split=5000).")


def markdown(runs: list[dict]) -> str:
  for run in runs:
    check(run)
  lines = ["| run | recipe | steps | validation acc % (final step) | validation loss | "
           "train err %, last 100 steps |", "|---|---|---|---|---|---|"]
  for run in runs:
    rows, last = run["rows"], run["rows"][-1]
    err = 100 * (1 - np.mean([r["train/accuracy"] for r in rows[-plot.WINDOW:]]))
    lines.append(f"| {os.path.basename(run['dir'].rstrip('/'))} | {recipe(run['config'])} | "
                 f"{last['step']:,} | {100 * last['eval/accuracy']:.2f} | {last['eval/loss']:.3f} | "
                 f"{err:.2f} |")
  names = " / ".join(os.path.basename(r["dir"].rstrip("/")) for r in runs)
  lines += ["", f"| step | validation acc % ({names}) |", "|---|---|"]
  evals = [{r["step"]: r["eval/accuracy"] for r in run["rows"] if "eval/accuracy" in r}
           for run in runs]
  for step in evals[0]:
    accs = " / ".join(f"{100 * e[step]:.2f}" if step in e else "-" for e in evals)
    lines.append(f"| {step:,} | {accs} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="*", help="run folders (default: those stored in validation/)")
  args = parser.parse_args(argv)
  dirs = args.runs or sorted(glob.glob(os.path.join(HERE, "validation", "*", "")))
  if not dirs:
    raise SystemExit("no runs given and none stored in validation/")
  print(markdown([plot.read_run(d) for d in dirs]))


if __name__ == "__main__":
  main()
