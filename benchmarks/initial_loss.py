"""The loss at initialisation of CIFAR ResNets: ours, ours with Flax's default head, the PyTorch twin.

For each model and seed, the training-mode loss of the first batch of the CIFAR-10 preset
(`configs/cifar10.py:MODEL`: per-pixel mean, pad-crop-flip, BN over groups of 64), which is the
`train/loss` of step 1. A 10-class net that knows nothing should start near ln 10 = 2.303.

  python benchmarks/initial_loss.py --config.data_dir=DIR [--models resnet20,resnet56,resnet110] [--seeds 5]

Columns: ours (torchvision's classifier init), ours with the head re-drawn from Flax's default
(LeCun normal, std 1/sqrt(fan_in), zero bias; what resnet-jax used before), and the twin of
benchmarks/torch_twin.py (torchvision's init) where torch is installed. Prints a markdown table, then
one JSON line.
"""

import argparse
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)


def ours(config, batch, seeds):
  """(new-init losses, LeCun-head losses) over `seeds`, one compiled function for all."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from resnet_jax import models  # pylint: disable=g-import-not-at-top

  model = models.get_model(config.model, bn_group_size=config.bn_group_size)

  @jax.jit
  def losses(rng, images, labels):
    variables = model.init(rng, images[:1], train=False)
    def loss(params):
      logits, _ = model.apply({**variables, "params": params}, images, train=True,
                              mutable=["batch_stats"])
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    head = dict(variables["params"]["head"])
    lecun = {"kernel": nn.initializers.lecun_normal()(jax.random.fold_in(rng, 1),
                                                      head["kernel"].shape),
             "bias": jnp.zeros_like(head["bias"])}
    return loss(variables["params"]), loss({**variables["params"], "head": lecun})

  new, old = [], []
  for seed in seeds:
    a, b = losses(jax.random.key(seed), batch["image"], batch["label"])
    new.append(float(a))
    old.append(float(b))
  return new, old


def twin(config, batch, seeds):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  import minimal_torch  # pylint: disable=g-import-not-at-top

  depth = int(config.model.removeprefix("resnet"))
  images = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
  labels = torch.from_numpy(batch["label"].astype(np.int64))
  out = []
  for seed in seeds:
    torch.manual_seed(seed)
    model = minimal_torch.build_model(depth, config.bn_group_size).train()
    with torch.no_grad():
      out.append(float(F.cross_entropy(model(images), labels)))
  return out


def main(argv=None):
  from resnet_jax import config as config_lib, data  # pylint: disable=g-import-not-at-top
  from resnet_jax.cli.commands import split_overrides  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import derived  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="resnet20,resnet56,resnet110")
  parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
  args, extra = parser.parse_known_args(argv)
  overrides = split_overrides(extra)
  seeds = list(range(args.seeds))
  rows = []
  for name in args.models.split(","):
    config = config_lib.load(os.path.join(ROOT, f"configs/cifar10.py:{name}"), overrides)
    dataset = data.get_dataset(config, derived.image_size(config))
    batch = dataset.train_batch(config.seed, 0, config.batch_size)
    new, old = ours(config, batch, seeds)
    torch_losses = twin(config, batch, seeds)
    rows.append({"model": name, "seeds": seeds, "ours": new, "ours_lecun_head": old,
                 "twin": torch_losses})
  stat = lambda v: "n/a" if v is None else f"{np.mean(v):.3f} +- {np.std(v, ddof=1):.3f}"
  print("| model | ours | ours, Flax default head | PyTorch twin | ln 10 |\n|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['model']} | {stat(r['ours'])} | {stat(r['ours_lecun_head'])} | {stat(r['twin'])} | "
          f"{math.log(10):.3f} |")
  print(json.dumps(rows))


if __name__ == "__main__":
  main()
