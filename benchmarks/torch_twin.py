"""Trains the PyTorch twin of a CIFAR ResNet on our exact batches, to check how our training starts.

Same network as `minimal_torch.py` (option-A ResNet-(6n+2), PyTorch's default initialisation), fed
the batches our input pipeline gives a config at each step (same data, order and augmentation), with
the config's learning-rate schedule, momentum and weight decay. Prints the training loss at the steps
asked for, then one JSON line with every step's loss, to compare with `<workdir>/metrics.jsonl` of
`resnet-jax train` on the same config:

  python benchmarks/torch_twin.py --config configs/cifar10.py:resnet56 --steps 300 \\
      --config.data_dir=DIR

BN statistics come from groups of `bn_group_size` examples, as ours do, and the initialisation is
torchvision's (He fan-out convs, PyTorch's default classifier), as ours is. At the end it evaluates
on the config's evaluation split (BN in inference mode). It does not build plain nets. It is eager
PyTorch on the CPU: about a second per step for ResNet-56.
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
from resnet_jax import config as config_lib, data, models  # pylint: disable=g-import-not-at-top,wrong-import-position
from resnet_jax.cli.commands import split_overrides  # pylint: disable=g-import-not-at-top,wrong-import-position
from resnet_jax.run.errors import ConfigError  # pylint: disable=g-import-not-at-top,wrong-import-position
from resnet_jax.training import derived, optim  # pylint: disable=g-import-not-at-top, wrong-import-position


def check_config(config) -> int:
  """The CIFAR ResNet depth the twin can build for `config`, or a ConfigError naming the problem."""
  name = config.model
  model = models.get_model(name)  # a ValueError listing the names if unknown
  if (getattr(model, "stem", None) != "cifar" or model.block_cls is not models.ResidualBlock
      or model.shortcut != "A"):
    raise ConfigError(f"model={name!r}: the PyTorch twin builds CIFAR residual nets only "
                      "(resnet20, resnet56, ...: depth 6n+2).")
  unsupported = {"momentum_style": "optax", "nesterov": False, "shortcut": "",
                 "zero_init_residual": False, "width_multiplier": 1.0, "grad_clip_norm": 0.0,
                 "label_smoothing": 0.0, "dtype": "float32"}
  for key, value in unsupported.items():
    if config[key] != value:
      raise ConfigError(f"{key}={config[key]!r} is not built into the twin; run it with "
                        f"--config.{key}={value!r}.")
  return 6 * model.stage_sizes[0] + 2


def run(config, steps: int, progress_every: int = 0) -> dict:
  """Trains the twin for `steps` steps on the config's batches.

  Returns {"loss": [...], "accuracy": [...]} (steps 1..`steps`, training mode, as our metrics.jsonl
  `train/loss` and `train/accuracy`) and "eval_accuracy", "eval_loss" on the evaluation split.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  depth = check_config(config)
  dataset = data.get_dataset(config, derived.image_size(config))
  if dataset.image_shape != (32, 32, 3) or dataset.num_classes != minimal_torch.NUM_CLASSES:
    raise ConfigError(f"dataset {config.dataset!r} gives {dataset.image_shape} images and "
                      f"{dataset.num_classes} classes; the twin takes 32x32x3 and 10 (CIFAR-10).")
  torch.manual_seed(config.seed)
  model = minimal_torch.build_model(depth, config.bn_group_size)
  model.train()
  decay = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
  if config.weight_decay_mask == "all":
    decay = list(model.parameters())
  ids = {id(p) for p in decay}
  groups = [{"params": decay, "weight_decay": config.weight_decay},
            {"params": [p for p in model.parameters() if id(p) not in ids], "weight_decay": 0.0}]
  opt = torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum)
  lr_fn = optim.create_learning_rate_fn(config)
  losses, accuracies = [], []
  start = time.perf_counter()
  for step in range(steps):
    batch = dataset.train_batch(config.seed, step, config.batch_size)
    images = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(batch["label"].astype(np.int64))
    for group in opt.param_groups:
      group["lr"] = float(lr_fn(step))
    opt.zero_grad(set_to_none=True)
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    opt.step()
    losses.append(loss.item())
    accuracies.append((logits.argmax(-1) == labels).float().mean().item())
    if progress_every and (step + 1) % progress_every == 0:  # long CPU runs: show they move
      rate = (step + 1) / (time.perf_counter() - start)
      print(f"twin step {step + 1}/{steps}: loss {losses[-1]:.3f}, {rate:.2f} steps/s",
            file=sys.stderr, flush=True)
  model.eval()
  correct = total_loss = count = 0.0
  with torch.no_grad():
    for batch in dataset.eval_batches(config.eval_batch_size):
      images = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
      labels = torch.from_numpy(batch["label"].astype(np.int64))
      mask = torch.from_numpy(batch["mask"])
      logits = model(images)
      total_loss += float((F.cross_entropy(logits, labels, reduction="none") * mask).sum())
      correct += float(((logits.argmax(-1) == labels).float() * mask).sum())
      count += float(mask.sum())
  return {"loss": losses, "accuracy": accuracies, "eval_loss": total_loss / count,
          "eval_accuracy": correct / count}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="a config file, e.g. configs/cifar10.py:resnet56")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--report-steps", default="1,2,3,5,10,20,40,80,120,160,200,250,300",
                      help="1-based steps whose loss is printed (those <= --steps)")
  parser.add_argument("--progress-every", type=int, default=100,
                      help="print step, loss and rate every N steps while training (0: never)")
  args, extra = parser.parse_known_args(argv)
  if args.steps < 1:
    parser.error("--steps must be >= 1")
  try:  # the same --config.KEY=VALUE overrides as `resnet-jax train`
    config = config_lib.load(args.config, split_overrides(extra))
    result = run(config, args.steps, args.progress_every)
  except ConfigError as e:  # a config the twin cannot take (it refuses before it trains)
    parser.error(str(e))
  losses = result["loss"]
  for s in (int(s) for s in args.report_steps.split(",") if s.strip()):
    if 1 <= s <= len(losses):
      print(f"step {s}: loss {losses[s - 1]:.3f}", file=sys.stderr)
  print(f"eval accuracy {result['eval_accuracy']:.4f}", file=sys.stderr)
  print(json.dumps({"model": config.model, "seed": config.seed, "steps": len(losses), **result}))


if __name__ == "__main__":
  main()
