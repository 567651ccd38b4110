"""Residual networks and their plain twins (He et al. 2015), VGG-19, and a registry of presets.

Usage:
  model = get_model("resnet20")
  variables = model.init(rng, images, train=False)          # images: NHWC float
  logits = model.apply(variables, images, train=False)
  logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])

Submodule names are stable (stem_conv, stage2_block1/conv1, .../proj_conv, head), so checkpoint paths
never move. A plain network is the residual network with its shortcuts removed, nothing more.
"""

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax import stages
from resnet_jax import layers
from resnet_jax.layers import BatchNorm, pad_shortcut
from resnet_jax.preact import PreActBottleneckBlock, PreActResidualBlock
from resnet_jax.vgg import VGG

ModuleDef = Any
SHORTCUTS = ("A", "B", "C", "none")



def _shortcut(x, filters: int, strides: int, kind: str, conv: ModuleDef, norm: ModuleDef):
  """The block's identity path, or None for a plain block. Options from the paper, section 3.3."""
  if kind == "none":
    return None
  changes = strides != 1 or x.shape[-1] != filters
  if kind == "C" or (kind == "B" and changes):
    return norm(name="proj_bn")(conv(filters, (1, 1), strides, name="proj_conv")(x))
  if kind == "A" and changes:
    return pad_shortcut(x, filters, strides)
  return x


def _merge(y, shortcut, act):
  # The addition sits after the last BN and before the final ReLU (paper, Fig. 2 and eq. 1).
  return act(y) if shortcut is None else act(y + shortcut)


class ResidualBlock(nn.Module):
  """Basic block: conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable = nn.relu
  strides: int = 1
  shortcut: str = "B"
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x):
    y = self.norm(name="bn1")(self.conv(self.filters, (3, 3), self.strides, name="conv1")(x))
    # Fig. 7 of the paper: each layer's response after BN, before the ReLU or the addition. `sow`
    # stores nothing unless the caller makes "intermediates" mutable.
    self.sow("intermediates", "response", y)
    y = self.conv(self.filters, (3, 3), name="conv2")(self.act(y))
    y = self.norm(name="bn2", scale_init=_last_bn_init(self))(y)
    self.sow("intermediates", "response", y)
    return _merge(y, _shortcut(x, self.filters, self.strides, self.shortcut, self.conv, self.norm),
                  self.act)


class BottleneckBlock(nn.Module):
  """1x1 (reduce) - 3x3 - 1x1 (x4), BN after each conv; shortcut; ReLU.

  `stride_placement` "v1" strides the first 1x1 as the paper does (Table 1 FLOPs); "v1.5" strides the
  3x3 as torchvision does, which costs ~8% more FLOPs and is ~0.5% more accurate.
  """
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable = nn.relu
  strides: int = 1
  shortcut: str = "B"
  zero_init_residual: bool = False
  stride_placement: str = "v1.5"
  expansion: int = 4

  @nn.compact
  def __call__(self, x):
    s1, s2 = (self.strides, 1) if self.stride_placement == "v1" else (1, self.strides)
    y = self.norm(name="bn1")(self.conv(self.filters, (1, 1), s1, name="conv1")(x))
    self.sow("intermediates", "response", y)
    y = self.norm(name="bn2")(self.conv(self.filters, (3, 3), s2, name="conv2")(self.act(y)))
    self.sow("intermediates", "response", y)
    out = self.filters * self.expansion
    y = self.norm(name="bn3", scale_init=_last_bn_init(self))(
        self.conv(out, (1, 1), name="conv3")(self.act(y)))
    self.sow("intermediates", "response", y)
    return _merge(y, _shortcut(x, out, self.strides, self.shortcut, self.conv, self.norm), self.act)


def _last_bn_init(block) -> Callable:
  # Zero-init of the residual branch's last BN scale (Goyal et al. 2017, sec. 5.1): each block starts as
  # the identity, which eases early training of deep nets. A plain block has no identity to fall back on.
  if block.zero_init_residual and block.shortcut != "none":
    return nn.initializers.zeros
  return nn.initializers.ones


class PlainBlock(ResidualBlock):
  """ResidualBlock without its shortcut (the paper's plain baseline)."""
  shortcut: str = "none"


class PlainBottleneckBlock(BottleneckBlock):
  """BottleneckBlock without its shortcut."""
  shortcut: str = "none"


class ResNet(nn.Module):
  """Stem, stages of blocks, global average pool, dense head. NHWC input, float32 logits.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 3, 3) for ResNet-20, (3, 4, 6, 3) for ResNet-34/50.
    block_cls: one of the block classes above.
    stem: "cifar" (3x3/16, section 4.2) or "imagenet" (7x7/2 + 3x3/2 max-pool, Table 1).
    stage_widths: base filters per stage (bottlenecks output 4x).
    shortcut: "A", "B", "C" (paper, section 3.3) or "none" (plain net).
    preact: pre-activation (v2) ordering; needs a PreAct* block class.
    bn_group_size, axis_name: see layers.BatchNorm.
    scan_blocks: run the identical blocks of each stage (all but the first) with `nn.scan`, so compile
      time no longer grows with depth; parameters then live in `stageI_scan` (see
      `stages.to_scanned` / `stages.to_unrolled`).
    remat_blocks: recompute each block's activations in the backward pass (`jax.checkpoint`) instead
      of keeping them: less memory, ~1/3 more compute.
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int = 1000
  stem: str = "imagenet"
  stage_widths: Sequence[int] = (64, 128, 256, 512)
  shortcut: str = "B"
  stride_placement: str = "v1.5"
  zero_init_residual: bool = False
  width_multiplier: float = 1.0
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_group_size: int = 0
  axis_name: Optional[str] = None
  scan_blocks: bool = False
  remat_blocks: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    _check_choice("shortcut", self.shortcut, SHORTCUTS)
    _check_choice("stride_placement", self.stride_placement, ("v1", "v1.5"))
    _check_choice("stem", self.stem, ("cifar", "imagenet"))
    preact = self.block_cls in (PreActResidualBlock, PreActBottleneckBlock)
    conv = functools.partial(layers.conv, dtype=self.dtype)
    norm = functools.partial(BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             dtype=self.dtype, group_size=self.bn_group_size, axis_name=self.axis_name)
    extra = {} if preact else {"zero_init_residual": self.zero_init_residual}
    if preact and self.zero_init_residual:
      raise ValueError("zero_init_residual applies to post-activation blocks; pre-activation blocks "
                       "end in a conv, not a BN. Set zero_init_residual=False.")
    if self.block_cls in (BottleneckBlock, PlainBottleneckBlock, PreActBottleneckBlock):
      extra["stride_placement"] = self.stride_placement

    widths = [max(1, int(round(w * self.width_multiplier))) for w in self.stage_widths]
    x = jnp.asarray(x, self.dtype)
    if self.stem == "cifar":
      x = conv(widths[0], (3, 3), name="stem_conv")(x)
    else:
      x = conv(widths[0], (7, 7), 2, name="stem_conv")(x)
    if not (preact and self.stem == "cifar"):  # v2 CIFAR nets start with a bare conv (He et al. 2016)
      x = nn.relu(norm(name="stem_bn")(x))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block_cls = nn.remat(self.block_cls) if self.remat_blocks else self.block_cls
    for i, (size, width) in enumerate(zip(self.stage_sizes, widths)):
      x = stages.stage(x, block_cls, size, f"stage{i + 1}", scan=self.scan_blocks, filters=width,
                       conv=conv, norm=norm, strides=2 if i > 0 else 1, shortcut=self.shortcut, **extra)
    if preact:
      x = nn.relu(norm(name="final_bn")(x))
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return layers.classifier(self.num_classes, x.shape[-1])(x)


def _check_choice(key, value, choices):
  if value not in choices:
    raise ValueError(f"{key}={value!r} is not one of {list(choices)}.")


# --- Registry: architecture is data (depths and block types from tables, presets by partial). ---

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
