"""The registry of presets: architecture is data (depths and block types from tables, presets by partial).

Usage:
  model = get_model("resnet20")
  variables = model.init(rng, images, train=False)          # images: NHWC float
  logits = model.apply(variables, images, train=False)
  logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
"""

import functools
from typing import Optional

import flax.linen as nn

from resnet_jax.models.blocks import BottleneckBlock, ResidualBlock
from resnet_jax.models.preact import PreActBottleneckBlock, PreActResidualBlock
from resnet_jax.models.resnet import ResNet
from resnet_jax.models.vgg import VGG

# Depth 6n+2 -> n (paper, sec. 4.2). Depth 8 (n=1) is ours: the smallest net with every kind of block,
# for tests and smoke runs.
CIFAR_DEPTHS = {8: 1, 20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}
IMAGENET_DEPTHS = {  # Table 1
    18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True),
}


def _registry():
  reg = {}  # name -> (module partial, default image size)
  for kind in ("resnet", "plain"):
    for depth, n in CIFAR_DEPTHS.items():
      reg[f"{kind}{depth}"] = (functools.partial(
          ResNet, stage_sizes=(n, n, n), block_cls=ResidualBlock, num_classes=10, stem="cifar",
          stage_widths=(16, 32, 64), shortcut="A" if kind == "resnet" else "none"), 32)
  for kind in ("resnet", "plain"):
    for depth, (sizes, bottleneck) in IMAGENET_DEPTHS.items():
      reg[f"{kind}{depth}"] = (functools.partial(
          ResNet, stage_sizes=sizes, block_cls=BottleneckBlock if bottleneck else ResidualBlock,
          num_classes=1000, stem="imagenet", shortcut="B" if kind == "resnet" else "none"), 224)
  reg["vgg19"] = (functools.partial(VGG, num_classes=1000), 224)
  return reg


_REGISTRY = _registry()


def list_models() -> list[str]:
  """Registered model names: CIFAR ResNets and plain nets, ImageNet ones, then VGG-19."""
  return list(_REGISTRY)


def default_image_size(name: str) -> int:
  """The input side the preset was designed for (32 for CIFAR nets, 224 for ImageNet nets)."""
  return _lookup(name)[1]


def get_model(name: str, num_classes: Optional[int] = None, **overrides) -> nn.Module:
  """Builds a registered model; `overrides` replace any module attribute (e.g. dtype, shortcut).

  `preact=True` swaps in the pre-activation (v2) blocks. Plain presets keep shortcut "none".
  """
  make, _ = _lookup(name)
  if num_classes is not None:
    overrides["num_classes"] = num_classes
  if overrides.pop("preact", False):
    block = make.keywords.get("block_cls")
    if block not in (ResidualBlock, BottleneckBlock):
      raise ValueError(f"preact=True needs a residual ResNet preset; {name!r} has none.")
    overrides["block_cls"] = PreActResidualBlock if block is ResidualBlock else PreActBottleneckBlock
  if make.keywords.get("shortcut") == "none" and overrides.get("shortcut", "none") != "none":
    raise ValueError(f"{name!r} is a plain net; it has no shortcut to set. Use the resnet preset.")
  fields = set(make.func.__dataclass_fields__) - {"parent", "name"}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for {name!r}; valid: {sorted(fields)}.")
  return make(**overrides)


def _lookup(name):
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(_REGISTRY)}.")
  return _REGISTRY[name]
