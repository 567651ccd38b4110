"""The paper's figures from a sweep directory (PNG, matplotlib):

  curves.png      Fig. 1 / Fig. 6: training error (dashed) and test error (bold) per depth, plain and
                  residual side by side;
  grad_norms.png  per-block gradient norms over training, plain vs residual of the same depth: the
                  vanishing gradient the shortcuts cure, made visible;
  responses.png   Fig. 7: std of each layer's response (after BN, before ReLU/addition) of the trained
                  nets, in network order and sorted by magnitude.
"""

import io
import json
import re

from etils import epath
import numpy as np

from resnet_jax.experiments import curves, responses as responses_lib
from resnet_jax.run import metrics_log


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # files only; no display needed
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _family_depth(model: str) -> tuple[str, int]:
  m = re.fullmatch(r"([a-z_]+?)(\d+)", model)
  return (m.group(1), int(m.group(2))) if m else (model, 0)


def _load(run_dirs):
  runs = []
  for d in run_dirs:
    config = json.loads((epath.Path(d) / "config.json").read_text())
    family, depth = _family_depth(config["model"])
    runs.append({"dir": d, "config": config, "family": family, "depth": depth,
                 "rows": metrics_log.read_metrics(d)})
  # One curve per (family, depth): the first seed, so the figures stay readable.
  seen, unique = set(), []
  for r in sorted(runs, key=lambda r: (r["family"], r["depth"], r["config"]["seed"])):
    if (r["family"], r["depth"]) not in seen and r["rows"]:
      seen.add((r["family"], r["depth"]))
      unique.append(r)
  return unique


def _colors(depths):
  plt = _plt()
  cmap = plt.get_cmap("viridis")
  depths = sorted(set(depths))
  return {d: cmap(0.85 * i / max(1, len(depths) - 1)) for i, d in enumerate(depths)}


def plot_curves(runs, path):
  plt = _plt()
  families = sorted({r["family"] for r in runs}, key=lambda f: (f != "plain", f))
  colors = _colors([r["depth"] for r in runs])
  fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4), sharey=True,
                           squeeze=False)
  for ax, family in zip(axes[0], families):
    for r in (r for r in runs if r["family"] == family):
      label = f"{family}-{r['depth']}"
      steps, err = curves.train_error_curve(r["rows"])
      ax.plot(steps, err, "--", color=colors[r["depth"]], lw=1.2, label=f"{label} train")
      steps, err = curves.test_error_curve(r["rows"])
      if len(steps):
        ax.plot(steps, err, "-", color=colors[r["depth"]], lw=2.5, label=f"{label} test")
    ax.set_title({"plain": "plain networks", "resnet": "ResNets"}.get(family, family))
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("error (%)")
  fig.suptitle("Training (dashed) and test (bold) error, as He et al. 2015 Fig. 1/6")
  fig.tight_layout()
  _save(fig, path)


def _smooth(x, w):
  if w <= 1 or len(x) < w:
    return x
  return np.convolve(x, np.ones(w) / w, mode="valid")


def plot_grad_norms(runs, path):
  """For each depth run both plain and residual: one panel each, a line per block, log scale."""
  plt = _plt()
  depths = sorted({r["depth"] for r in runs if r["family"] == "plain"} &
                  {r["depth"] for r in runs if r["family"] == "resnet"})
  if not depths:
    depths = sorted({r["depth"] for r in runs})
  fig, axes = plt.subplots(len(depths), 2, figsize=(11, 3.6 * len(depths)), squeeze=False)
  cmap = plt.get_cmap("viridis")
  for row, depth in zip(axes, depths):
    for ax, family in zip(row, ("plain", "resnet")):
      match = [r for r in runs if r["family"] == family and r["depth"] == depth]
      ax.set_title(f"{family}-{depth}")
      ax.set_yscale("log")
      ax.set_xlabel("iteration")
      ax.grid(alpha=0.3)
      if not match:
        continue
      rows = match[0]["rows"]
      keys = _block_keys(rows[0])
      w = curves.window_size(len(rows))
      steps = _smooth(np.array([r["step"] for r in rows], np.float64), w)
      for i, key in enumerate(keys):
        values = _smooth(np.array([r[key] for r in rows], np.float64), w)
        ax.plot(steps, values, color=cmap(i / max(1, len(keys) - 1)), lw=1,
                label=key.split("/")[1] if i in (0, len(keys) - 1) else None)
      ax.legend(fontsize=7, title="input side -> output side", title_fontsize=7)
    row[0].set_ylabel("gradient norm")
  fig.suptitle("Per-block gradient norms (stem = dark, head = light)")
  fig.tight_layout()
  _save(fig, path)


def _block_keys(row) -> list[str]:
  """grad_norm/* keys in network order: stem, stage1_block1, ..., head."""
  def order(key):
    name = key.split("/", 1)[1]
    if name == "stem":
      return (0, 0, 0)
    if name == "head":
      return (2, 0, 0)
    nums = [int(x) for x in re.findall(r"\d+", name)] + [0, 0]
    return (1, nums[0], nums[1])
  return sorted((k for k in row if k.startswith("grad_norm/")), key=order)


def plot_responses(stds: dict, path):
  """`stds`: label -> list of per-layer response stds, network order."""
  plt = _plt()
  fig, (a, b) = plt.subplots(2, 1, figsize=(7, 7))
  colors = _colors([_family_depth(k)[1] for k in stds])
  for label, values in stds.items():
    family, depth = _family_depth(label)
    style = "--" if family == "plain" else "-"
    a.plot(np.arange(1, len(values) + 1), values, style, color=colors[depth], label=label)
    b.plot(np.arange(1, len(values) + 1), sorted(values, reverse=True), style, color=colors[depth],
           label=label)
  a.set_xlabel("layer index (original)")
  b.set_xlabel("layer index (sorted by magnitude)")
  for ax in (a, b):
    ax.set_ylabel("std")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle("Std of layer responses (after BN, before ReLU/addition), He et al. 2015 Fig. 7")
  fig.tight_layout()
  _save(fig, path)


def _save(fig, path) -> None:
  """Writes a figure as PNG to a local path or a bucket URL."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  _plt().close(fig)
  epath.Path(path).write_bytes(buffer.getvalue())


def write_all(root, run_dirs, responses: bool = True, log=None) -> list[epath.Path]:
  """The figures of the runs in `run_dirs`, written into `root`; returns the paths written."""
  log = log or (lambda text: None)
  runs = _load(run_dirs)
  out = epath.Path(root)
  written = []
  if runs:
    log(f"plotting {out / 'curves.png'} (Fig. 1/6) and {out / 'grad_norms.png'}")
    plot_curves(runs, out / "curves.png")
    plot_grad_norms(runs, out / "grad_norms.png")
    written += [out / "curves.png", out / "grad_norms.png"]
  if responses:
    stds = {}
    for r in runs:
      if r["family"] in ("plain", "resnet"):
        log(f"Fig. 7: layer responses of {r['family']}{r['depth']} from its checkpoint ({r['dir']})")
        values = responses_lib.response_stds(r["dir"])
        if values:
          stds[f"{r['family']}{r['depth']}"] = values
    if stds:
      plot_responses(stds, out / "responses.png")
      (out / "responses.json").write_text(json.dumps(stds))
      written += [out / "responses.png", out / "responses.json"]
  return written
