"""The paper's figures from a sweep directory (PNG, matplotlib):

  curves.png      Fig. 1 / Fig. 6: training error (dashed) and test error (bold) per depth, plain and
                  residual side by side;
  grad_norms.png  per-block gradient norms over training, plain vs residual of the same depth: the
                  vanishing gradient the shortcuts cure, made visible (without such pairs, e.g. a
                  residual-only sweep, one panel per net: no empty panels);
  responses.png   Fig. 7: std of each layer's response (after BN, before ReLU/addition) of the trained
                  nets, in network order and sorted by magnitude.
"""

import io
import json
import re
import textwrap

from etils import epath
import numpy as np

from resnet_jax.experiments import curves, responses as responses_lib
from resnet_jax.run import console, metrics_log, storage
from resnet_jax.run import workdir as workdir_lib


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # files only; no display needed
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _family_depth(model: str) -> tuple[str, int]:
  m = re.fullmatch(r"([a-z_]+?)(\d+)", model)
  return (m.group(1), int(m.group(2))) if m else (model, 0)


def _load(run_dirs):
  """Every run with metrics, grouped by (family, depth), seeds in order: [{..., "seeds": [runs]}]."""
  runs = []
  for d in run_dirs:
    config = workdir_lib.read_config(d)
    family, depth = _family_depth(config["model"])
    rows = metrics_log.read_metrics(d)
    if rows:
      runs.append({"dir": d, "config": config, "family": family, "depth": depth, "rows": rows})
  groups = {}
  for r in sorted(runs, key=lambda r: (r["family"], r["depth"], r["config"]["seed"])):
    groups.setdefault((r["family"], r["depth"]), []).append(r)
  # One entry per (family, depth): its first seed's fields, and every seed's run.
  return [{**seeds[0], "seeds": seeds} for seeds in groups.values()]


def _colors(depths):
  plt = _plt()
  cmap = plt.get_cmap("viridis")
  depths = sorted(set(depths))
  return {d: cmap(0.85 * i / max(1, len(depths) - 1)) for i, d in enumerate(depths)}


def _seeds_label(group) -> str:
  seeds = [r["config"]["seed"] for r in group["seeds"]]
  return f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds"


def plot_curves(runs, path):
  """Fig. 1/6: training error (dashed) and test error (bold, a marker at each evaluation) per depth,
  plain and residual side by side; every seed of a net is drawn, one line each, in its colour."""
  plt = _plt()
  families = sorted({r["family"] for r in runs}, key=lambda f: (f != "plain", f))
  colors = _colors([r["depth"] for r in runs])
  fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4), sharey=True,
                           squeeze=False)
  for ax, family in zip(axes[0], families):
    for group in (g for g in runs if g["family"] == family):
      label, color = f"{family}-{group['depth']} ({_seeds_label(group)})", colors[group["depth"]]
      for i, r in enumerate(group["seeds"]):
        alpha = 1.0 if len(group["seeds"]) == 1 else 0.6
        steps, err = curves.train_error_curve(r["rows"])
        ax.plot(steps, err, "--", color=color, lw=1.0, alpha=alpha,
                label=f"{label} train" if i == 0 else None)
        steps, err = curves.test_error_curve(r["rows"])
        if len(steps):
          ax.plot(steps, err, "-o", color=color, lw=2.2, ms=4, alpha=alpha,
                  label=f"{label} test" if i == 0 else None)
    ax.set_title({"plain": "plain networks", "resnet": "ResNets"}.get(family, family))
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("error (%)")
  _suptitle(fig, "Training (dashed) and test (bold, dots: evaluations) error, as He et al. 2015 "
                 "Fig. 1/6")
  fig.tight_layout()
  _save(fig, path)


def _smooth(x, w):
  if w <= 1 or len(x) < w:
    return x
  return np.convolve(x, np.ones(w) / w, mode="valid")


def plot_grad_norms(runs, path):
  """Every block's gradient norm over training, one line per block coloured from the stem (dark) to
  the head (light) with a colour bar naming the stages; plain and residual of a depth side by side
  on shared axes, so their scales compare at a glance (without such pairs, one panel per net). The
  first seed of each net."""
  plt = _plt()
  grid = grad_norm_panels(runs)
  fig, axes = plt.subplots(len(grid), len(grid[0]), figsize=(6 * len(grid[0]), 3.8 * len(grid)),
                           squeeze=False, sharex="row", sharey="row")
  cmap = plt.get_cmap("viridis")
  for row, nets in zip(axes, grid):
    for ax, net in zip(row, nets):
      ax.set_title(f"{net['family']}-{net['depth']} ({_seeds_label({'seeds': net['seeds'][:1]})})")
      ax.set_yscale("log")
      ax.set_xlabel("iteration")
      ax.grid(alpha=0.3)
      rows = net["rows"]
      keys = _block_keys(rows[0])
      w = curves.window_size(len(rows))
      steps = _smooth(np.array([r["step"] for r in rows], np.float64), w)
      for i, key in enumerate(keys):
        values = _smooth(np.array([r[key] for r in rows], np.float64), w)
        ax.plot(steps, values, color=cmap(i / max(1, len(keys) - 1)), lw=1)
      _block_colorbar(fig, ax, keys, cmap)
    row[0].set_ylabel("gradient norm (log)")
  _suptitle(fig, "Per-block gradient norms, stem (dark) to head (light)" +
            ("; shared axes per depth" if len(grid[0]) == 2 else ""))
  fig.tight_layout()
  _save(fig, path)


def grad_norm_panels(runs) -> list[list[dict]]:
  """The rows of grad_norms.png's panels: [plain, residual] for each depth that has both, else one
  net per row (a residual-only sweep draws no empty plain panels)."""
  by_net = {(r["family"], r["depth"]): r for r in runs}
  depths = sorted({d for f, d in by_net if f == "plain"} & {d for f, d in by_net if f == "resnet"})
  if depths:
    return [[by_net["plain", d], by_net["resnet", d]] for d in depths]
  return [[r] for r in sorted(runs, key=lambda r: (r["depth"], r["family"]))]


def _suptitle(fig, text: str):
  """The figure's title, wrapped at spaces until it fits the canvas (matplotlib clips a long one on
  both sides, and `tight_layout` then leaves space for the lines it has)."""
  title = fig.suptitle(text)
  renderer = fig.canvas.get_renderer()
  for width in range(len(text), 19, -4):
    title.set_text(textwrap.fill(text, width))
    if title.get_window_extent(renderer).width <= 0.96 * fig.bbox.width:
      break
  return title


def _block_colorbar(fig, ax, keys, cmap) -> None:
  """A colour bar for a panel's block lines: ticks at the stem, each stage's first block, the head."""
  import matplotlib as mpl  # pylint: disable=g-import-not-at-top

  names = [k.split("/", 1)[1] for k in keys]
  norm = mpl.colors.Normalize(0, max(1, len(keys) - 1))
  bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01)
  ticks = [i for i, n in enumerate(names) if n in ("stem", "head") or n.endswith("_block1")
           or n.endswith("_layer1")]
  bar.set_ticks(ticks)
  bar.set_ticklabels([names[i].replace("_block1", "").replace("_layer1", "") for i in ticks],
                     fontsize=7)
  bar.set_label("block", fontsize=8)


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
  _suptitle(fig, "Std of layer responses (after BN, before ReLU/addition), He et al. 2015 Fig. 7")
  fig.tight_layout()
  _save(fig, path)


def _save(fig, path) -> None:
  """Writes a figure as PNG to a local path or a bucket URL."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  _plt().close(fig)
  storage.write_bytes(path, buffer.getvalue())


def write_all(root, run_dirs, responses: bool = True, log=None) -> list[epath.Path]:
  """The figures of the runs in `run_dirs`, written into `root`; returns the paths written."""
  log = log or (lambda text: None)
  runs = _load(run_dirs)
  out = epath.Path(root)
  written = []
  if runs:
    with console.phase(log, f"plotting {out / 'curves.png'} (Fig. 1/6) and {out / 'grad_norms.png'}"):
      plot_curves(runs, out / "curves.png")
      plot_grad_norms(runs, out / "grad_norms.png")
    written += [out / "curves.png", out / "grad_norms.png"]
  if responses:
    stds = {}
    for r in runs:
      if r["family"] in ("plain", "resnet"):
        with console.phase(log, f"Fig. 7: layer responses of {r['family']}{r['depth']} from its "
                           f"checkpoint ({r['dir']})"):
          values = responses_lib.response_stds(r["dir"])
        if values:
          stds[f"{r['family']}{r['depth']}"] = values
    if stds:
      plot_responses(stds, out / "responses.png")
      (out / "responses.json").write_text(json.dumps(stds))
      written += [out / "responses.png", out / "responses.json"]
  return written
