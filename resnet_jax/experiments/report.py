"""Result tables of a sweep directory: `summary.csv` and `summary.md`, from each run's metrics.jsonl.

Definitions (errors in %):
  train error at a step: 100 x (1 - mean train/accuracy over a window of W consecutive steps), where W
    is 5% of the run's steps (at least 1): the per-step accuracy is measured on one augmented batch in
    training mode, so it is averaged, like the paper's training curves;
  final train error: over the last W steps; best train error: the lowest over the run's consecutive
    windows of W steps;
  final / best test error: at the last evaluation / the lowest over all evaluations (eval/accuracy);
    the best is selected on the test set itself, so it is optimistic, and the tables say so.
"""

import csv
import io
import math
import re

from etils import epath
import numpy as np

from resnet_jax.run import storage
from resnet_jax.experiments.curves import test_error_curve, train_error_curve
from resnet_jax.experiments.plots import write_all as write_plots
from resnet_jax.run import console, metrics_log
from resnet_jax.run import workdir as workdir_lib
from resnet_jax.run.errors import WorkdirError

# He et al. 2015, Table 6: CIFAR-10 test error (%). ResNet-110: best of 5 runs (mean 6.61 +- 0.16).
PAPER_TABLE6 = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97,
                "resnet110": 6.43, "resnet1202": 7.93}

COLUMNS = ["run", "model", "dataset", "seed", "steps", "params", "macs", "final_train_error",
           "best_train_error", "final_test_error", "best_test_error", "paper_test_error", "wall_time_s"]


def run_dirs(root) -> list[str]:
  """Run directories under `root` (itself included): those holding config.json and metrics.jsonl.

  `root` is a local path or a bucket URL (gs://...).
  """
  found, todo = [], [epath.Path(root)]
  while todo:  # iterdir keeps a bucket's gs:// prefix (epath's walk returns bare object names)
    folder = todo.pop()
    entries = list(folder.iterdir())
    names = {p.name for p in entries}
    if workdir_lib.is_run(names):
      found.append(str(folder))
    # A run's own folders hold no runs: not worth listing (a bucket lists each object).
    todo += [p for p in entries if p.name not in workdir_lib.RUN_SUBDIRS and p.is_dir()]
  return sorted(found)


def run_label(run_dir, root) -> str:
  """A run's name in tables and plots: its path under `root`, or its folder's name if it is root."""
  run_dir, root = str(run_dir).rstrip("/"), str(root).rstrip("/")
  if run_dir == root:
    return epath.Path(storage.absolute(root)).name
  return run_dir[len(root) + 1:] if run_dir.startswith(root + "/") else run_dir


def summarize_run(run_dir, root) -> dict:
  """One row of the report: a run's final and best errors, size, steps and wall time."""
  config = workdir_lib.read_config(run_dir)
  rows = metrics_log.read_metrics(run_dir)
  info = workdir_lib.read_model(run_dir)
  _, train_err = train_error_curve(rows) if rows else ([], [])
  _, test_err = test_error_curve(rows) if rows else ([], [])
  elapsed = [r["perf/elapsed_s"] for r in rows if "perf/elapsed_s" in r]
  paper = PAPER_TABLE6.get(config["model"]) if config.get("dataset") == "cifar10" else None
  return {
      "run": run_label(run_dir, root), "model": config["model"], "dataset": config["dataset"],
      "seed": config["seed"], "steps": rows[-1]["step"] if rows else 0,
      "params": info.get("params"), "macs": info.get("macs"),
      "final_train_error": float(train_err[-1]) if len(train_err) else None,
      "best_train_error": float(np.min(train_err)) if len(train_err) else None,
      "final_test_error": float(test_err[-1]) if len(test_err) else None,
      "best_test_error": float(np.min(test_err)) if len(test_err) else None,
      "paper_test_error": paper, "wall_time_s": elapsed[-1] if elapsed else None,
  }


def group_name(run: str, model: str) -> str:
  """Runs that differ only in their seed share a group: `resnet20-seed1` -> `resnet20`; runs named by
  their seed alone (`seed0`, `seed1`, ...: a sweep over seeds only) -> their model's name."""
  return re.sub(r"(^|-)seed\d+(?=-|$)", "", run).strip("-") or model


def aggregate(summaries: list[dict]) -> list[dict]:
  """Mean and standard deviation (over seeds) of the final errors of each group."""
  groups: dict[str, list[dict]] = {}
  for s in summaries:
    groups.setdefault(group_name(s["run"], s["model"]), []).append(s)
  out = []
  for name, members in groups.items():
    row = {"group": name, "model": members[0]["model"], "runs": len(members),
           "paper_test_error": members[0]["paper_test_error"]}
    for key in ("final_train_error", "final_test_error"):
      values = [m[key] for m in members if m[key] is not None]
      row[key + "_mean"] = float(np.mean(values)) if values else None
      row[key + "_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0 if values else None
    out.append(row)
  return out


def _fmt(value, digits=2):
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  if isinstance(value, int) and value >= 10_000:
    return f"{value:,}"
  return str(value)


def markdown(summaries: list[dict], groups: list[dict]) -> str:
  """summary.md: the per-run table, then the mean +- std over seeds of each group."""
  head = ("| run | model | steps | params | multiply-adds | train err % (final / best) | "
          "test err % (final / best*) | paper test err % | wall s |")
  lines = ["## Runs", "", head, "|" + "---|" * 9]
  for s in summaries:
    lines.append(f"| {s['run']} | {s['model']} | {s['steps']} | {_fmt(s['params'])} | "
                 f"{'-' if s['macs'] is None else format(s['macs'], '.3g')} | "
                 f"{_fmt(s['final_train_error'])} / {_fmt(s['best_train_error'])} | "
                 f"{_fmt(s['final_test_error'])} / {_fmt(s['best_test_error'])} | "
                 f"{_fmt(s['paper_test_error'])} | {_fmt(s['wall_time_s'], 0)} |")
  lines += ["", "## Mean +- std over seeds", "",
            "| group | runs | final train err % | final test err % | paper test err % |", "|---|---|---|---|---|"]
  for g in groups:
    lines.append(f"| {g['group']} | {g['runs']} | {_fmt(g['final_train_error_mean'])} +- "
                 f"{_fmt(g['final_train_error_std'])} | {_fmt(g['final_test_error_mean'])} +- "
                 f"{_fmt(g['final_test_error_std'])} | {_fmt(g['paper_test_error'])} |")
  lines += ["", "Errors as defined in `resnet_jax/experiments/curves.py`: train error averages the "
            "per-step training accuracy over windows of 5% of the steps. *Best test error is the "
            "lowest over all evaluations, i.e. selected on the test set itself: an optimistic figure, "
            "not a held-out one; the final test error is the honest one, and the one averaged over "
            "seeds. Paper numbers: He et al. 2015, Table 6 (single runs; ResNet-110 best of 5).", ""]
  return "\n".join(lines)


def write_report(root, plots: bool = True, responses: bool = True, log=None) -> list[dict]:
  """Writes summary.csv, summary.md (and the plots) for every run under `root`; returns the rows.

  `root` is a local path or a bucket URL. `log(text)` hears one line per phase and the paths written.
  """
  log = log or console.Console().say
  if not epath.Path(root).is_dir():
    raise WorkdirError(f"{root} is not a folder: give a sweep's --workdir, or one run's.")
  dirs = run_dirs(root)
  if not dirs:
    raise WorkdirError(f"no runs under {root} (a run directory holds config.json and metrics.jsonl).")
  log(f"report of {len(dirs)} run(s) under {root}: reading their metrics")
  summaries = [summarize_run(d, root) for d in dirs]
  groups = aggregate(summaries)
  out = epath.Path(root)
  table = io.StringIO()
  writer = csv.DictWriter(table, fieldnames=COLUMNS)
  writer.writeheader()
  writer.writerows(summaries)
  written = [out / workdir_lib.SUMMARY_CSV, out / workdir_lib.SUMMARY_MD]
  storage.write_atomic(written[0], table.getvalue())
  storage.write_atomic(written[1], f"# Results: {epath.Path(storage.absolute(root)).name}\n\n"
                       + markdown(summaries, groups))
  if plots:
    written += write_plots(root, dirs, responses=responses, log=log)
  log("wrote " + ", ".join(str(p) for p in written))
  return summaries
