"""Ours and the PyTorch twin in lockstep from identical weights: where do they first differ, and in what?

  python benchmarks/twin_lockstep.py --config configs/cifar10.py:resnet56 --steps 500 \\
      --config.data_dir=DIR [--out FILE.json]
  python benchmarks/twin_lockstep.py --config configs/cifar10.py:resnet56 --precision \\
      --config.data_dir=DIR       # step 1 only: both sides in float32 against float64
  python benchmarks/twin_lockstep.py --config configs/cifar10.py:resnet56 --control --steps 30 \\
      --config.data_dir=DIR       # ours against ours, another summation order: rounding alone

Our initial variables are written into the twin (`to_twin`: our names and layouts to the twin's:
HWIO -> OIHW kernels, the dense kernel transposed, BN scale/bias/running statistics), so both sides
start from the same weights, and both train on our batches in the same order. After every step the
script compares the two sides quantity by quantity: the loss, every block's gradient norm, every
parameter, the momentum buffers and BN's running statistics (largest relative difference over the
block's arrays). Differences of float rounding (~1e-6) are expected and grow where training is
chaotic; a difference in what is computed shows as a jump in one quantity from step 1. Prints a
line per reported step and writes every step's figures to --out.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import minimal_torch  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_twin  # pylint: disable=g-import-not-at-top,wrong-import-position
from resnet_jax import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from resnet_jax.cli.commands import split_overrides  # pylint: disable=g-import-not-at-top,wrong-import-position
from resnet_jax.training import optim  # pylint: disable=g-import-not-at-top,wrong-import-position
from resnet_jax.training.trainer import Trainer  # pylint: disable=g-import-not-at-top,wrong-import-position


def block_names(depth: int) -> list[str]:
  """Our block names in the twin's order (blocks.0, blocks.1, ...)."""
  n = (depth - 2) // 6
  return [f"stage{s}_block{b}" for s in (1, 2, 3) for b in range(1, n + 1)]


def pairs(depth: int):
  """(our path, twin module name) of every conv, BN and the head."""
  out = [(("stem_conv",), "stem.0", "conv"), (("stem_bn",), "stem.1", "bn")]
  for k, name in enumerate(block_names(depth)):
    for layer in ("conv1", "bn1", "conv2", "bn2"):
      out.append(((name, layer), f"blocks.{k}.{layer}", layer[:-1] if layer.startswith("bn") else "conv"))
  out.append((("head",), "fc", "dense"))
  return out


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def to_twin(params, batch_stats, depth: int) -> dict:
  """Our variables as the twin's state dict (NumPy arrays)."""
  sd = {}
  for path, module, kind in pairs(depth):
    p = _get(params, path)
    if kind == "conv":
      sd[f"{module}.weight"] = np.asarray(p["kernel"]).transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif kind == "dense":
      sd[f"{module}.weight"] = np.asarray(p["kernel"]).T
      sd[f"{module}.bias"] = np.asarray(p["bias"])
    else:
      s = _get(batch_stats, path)
      sd.update({f"{module}.weight": np.asarray(p["scale"]), f"{module}.bias": np.asarray(p["bias"]),
                 f"{module}.running_mean": np.asarray(s["mean"]),
                 f"{module}.running_var": np.asarray(s["var"])})
  return sd


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def compare(state, model, opt, depth: int) -> dict:
  """Largest relative difference per kind of quantity between our state and the twin's."""
  ours = to_twin(state.params, state.batch_stats, depth)
  # The momentum buffers: optax's trace state holds them in params' tree.
  trace = next(s for s in state.opt_state if hasattr(s, "trace")).trace
  momentum = to_twin(trace, state.batch_stats, depth)
  theirs = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  named = dict(model.named_parameters())
  out = {"weights": 0.0, "bn_affine": 0.0, "running_stats": 0.0, "momentum": 0.0}
  for key, value in ours.items():
    kind = ("running_stats" if "running" in key else
            "bn_affine" if (".bn" in key or key.startswith("stem.1")) else "weights")
    out[kind] = max(out[kind], _rel(value, theirs[key]))
    if key in named and key in momentum:
      buf = opt.state[named[key]].get("momentum_buffer")
      if buf is not None:
        out["momentum"] = max(out["momentum"], _rel(momentum[key], buf.numpy()))
  return out


def start_both(config):
  """Our trainer and initial state, and the twin in training mode holding the same weights."""
  import torch  # pylint: disable=g-import-not-at-top
  depth = torch_twin.check_config(config)
  trainer = Trainer(config)
  state = trainer.init_state()
  model = minimal_torch.build_model(depth, config.bn_group_size)
  model.load_state_dict({k: torch.from_numpy(np.array(v))
                         for k, v in to_twin(state.params, state.batch_stats, depth).items()},
                        strict=False)
  model.train()
  return trainer, state, model, depth


def run(config, steps: int, report_steps: set) -> list[dict]:
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  trainer, state, model, depth = start_both(config)
  decay = list(model.parameters()) if config.weight_decay_mask == "all" else [
      m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
  ids = {id(p) for p in decay}
  opt = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                         {"params": [p for p in model.parameters() if id(p) not in ids],
                          "weight_decay": 0.0}], lr=config.learning_rate, momentum=config.momentum)
  lr_fn = optim.create_learning_rate_fn(config)
  state = trainer.strategy.put_state(state)
  rows, start = [], time.perf_counter()
  for step in range(steps):
    state, metrics = trainer.dispatch(state, step, 1)
    metrics = trainer.strategy.fetch(metrics)
    batch = trainer.dataset.train_batch(config.seed, step, config.batch_size)
    images = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(batch["label"].astype(np.int64))
    for group in opt.param_groups:
      group["lr"] = float(lr_fn(step))
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    twin_norms = _block_grad_norms(model, depth)
    opt.step()
    host = trainer.strategy.fetch(trainer.strategy.member_state(state))
    row = {"step": step + 1, "loss_ours": float(metrics["train/loss"]), "loss_twin": loss.item(),
           "grad_norm": max(_rel(metrics[f"grad_norm/{k}"], v) for k, v in twin_norms.items()),
           **compare(host, model, opt, depth)}
    rows.append(row)
    if step + 1 in report_steps:
      print(f"step {row['step']}: loss {row['loss_ours']:.5f} vs {row['loss_twin']:.5f}; largest "
            f"relative differences: grad norms {row['grad_norm']:.1e}, weights {row['weights']:.1e}, "
            f"BN scale/bias {row['bn_affine']:.1e}, momentum {row['momentum']:.1e}, running "
            f"statistics {row['running_stats']:.1e} ({time.perf_counter() - start:.0f} s)",
            file=sys.stderr, flush=True)
  return rows


def first_step_precision(config) -> dict:
  """Step 1's per-block gradient norms from identical weights and the same batch: ours (float32),
  the twin in float32 and the twin in float64, the reference both are rounding away from. Returns
  the largest relative difference of each float32 side from float64, and of the two from each other."""
  import copy  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  trainer, state, model, depth = start_both(config)
  _, metrics = trainer.dispatch(trainer.strategy.put_state(state), 0, 1)
  ours = {k.split("/", 1)[1]: float(v) for k, v in trainer.strategy.fetch(metrics).items()
          if k.startswith("grad_norm/")}
  batch = trainer.dataset.train_batch(config.seed, 0, config.batch_size)
  norms = {}
  for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
    twin = copy.deepcopy(model).to(dtype)
    images = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2))).to(dtype)
    loss = F.cross_entropy(twin(images), torch.from_numpy(batch["label"].astype(np.int64)))
    loss.backward()
    norms[name] = _block_grad_norms(twin, depth)
  ref = norms["float64"]
  rel = lambda a: max(abs(a[k] - ref[k]) / ref[k] for k in ref)
  return {"ours_vs_float64": rel(ours), "twin_float32_vs_float64": rel(norms["float32"]),
          "ours_vs_twin_float32": max(abs(ours[k] - norms["float32"][k]) / norms["float32"][k]
                                      for k in ref),
          "per_block": {k: {"ours": ours[k], "twin_float32": norms["float32"][k],
                            "twin_float64": ref[k]} for k in ref}}


def ours_vs_ours(config, steps: int, report_steps: set) -> list[dict]:
  """The control: ours against ours from the same weights on the same batches, the second compiled
  without cpu_fusion (the same arithmetic in another float32 summation order). How far float
  rounding alone carries two runs apart, step by step, is what the twin comparison is read against."""
  first, second = Trainer(config), Trainer(ml_config_with(config, cpu_fusion=""))
  state = first.init_state()
  a, b = first.strategy.put_state(state), second.strategy.put_state(state)
  rows = []
  for step in range(steps):
    a, ma = first.dispatch(a, step, 1)
    b, mb = second.dispatch(b, step, 1)
    ma, mb = first.strategy.fetch(ma), second.strategy.fetch(mb)
    pa = first.strategy.fetch(first.strategy.member_state(a)).params
    pb = second.strategy.fetch(second.strategy.member_state(b)).params
    row = {"step": step + 1, "loss_a": float(ma["train/loss"]), "loss_b": float(mb["train/loss"]),
           "grad_norm": max(_rel(ma[k], mb[k]) for k in ma if k.startswith("grad_norm/")),
           "weights": max(_rel(x, y) for x, y in zip(jax_leaves(pa), jax_leaves(pb)))}
    rows.append(row)
    if step + 1 in report_steps:
      print(f"step {row['step']}: loss {row['loss_a']:.5f} vs {row['loss_b']:.5f}; largest relative "
            f"differences: grad norms {row['grad_norm']:.1e}, weights {row['weights']:.1e}",
            file=sys.stderr, flush=True)
  return rows


def ml_config_with(config, **values):
  out = config.copy_and_resolve_references()
  for key, value in values.items():
    out[key] = value
  return out


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_leaves(tree)


def _block_grad_norms(model, depth: int) -> dict[str, float]:
  """Our grad_norm/<block> metrics, computed from the twin's gradients."""
  sq = {}
  for name, p in model.named_parameters():
    if name.startswith("stem"):
      block = "stem"
    elif name.startswith("fc"):
      block = "head"
    else:
      block = block_names(depth)[int(name.split(".")[1])]
    sq[block] = sq.get(block, 0.0) + float((p.grad.double() ** 2).sum())
  return {k: v ** 0.5 for k, v in sq.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="a config file, e.g. configs/cifar10.py:resnet56")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--report-steps", default="1,2,3,5,10,20,30,50,100,200,300,400,500")
  parser.add_argument("--out", default="", help="every step's figures as JSON")
  parser.add_argument("--precision", action="store_true",
                      help="only step 1: ours and the twin in float32 against the twin in float64")
  parser.add_argument("--control", action="store_true",
                      help="ours against ours (cpu_fusion off in the second): rounding alone")
  args, extra = parser.parse_known_args(argv)
  config = config_lib.load(args.config, {"num_devices": "1", **split_overrides(extra)})
  if args.control:
    rows = ours_vs_ours(config, args.steps, {int(s) for s in args.report_steps.split(",") if s})
    if args.out:
      with open(args.out, "w") as f:
        json.dump({"config": args.config, "overrides": extra, "control": True, "rows": rows}, f)
    print(json.dumps(rows[-1]))
    return
  if args.precision:
    result = first_step_precision(config)
    print(json.dumps(result))
    if args.out:
      with open(args.out, "w") as f:
        json.dump({"config": args.config, "overrides": extra, **result}, f)
    return
  rows = run(config, args.steps, {int(s) for s in args.report_steps.split(",") if s.strip()})
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"config": args.config, "overrides": extra, "rows": rows}, f)
  print(json.dumps(rows[-1]))


if __name__ == "__main__":
  main()
