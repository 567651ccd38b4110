"""The ResNet network: stem, stages of blocks, global average pool, dense head (He et al. 2015).

Submodule names are stable (stem_conv, stage2_block1/conv1, .../proj_conv, head), so checkpoint paths
never move. As a backbone: `num_classes=0` drops the head and returns the pooled features, and
`return_features=True` returns every stage's output as well.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.checks import check_choice
from resnet_jax.models import layers, stages
from resnet_jax.models.blocks import (SHORTCUTS, STRIDE_PLACEMENTS, BottleneckBlock,
                                      PlainBottleneckBlock)
from resnet_jax.models.preact import PreActBottleneckBlock, PreActResidualBlock

ModuleDef = Any


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
    num_classes: size of the dense head; 0 = no head, the network returns its pooled features.
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
  def __call__(self, x, train: Optional[bool] = None, return_features: bool = False):
    """Logits (or features) of NHWC images `x`.

    Args:
      x: images [N, H, W, C], any float dtype (computed in `dtype`).
      train: True: BN normalises with batch statistics and updates its running ones (apply with
        `mutable=["batch_stats"]`); False: BN uses the running statistics (inference). None:
        training exactly when `batch_stats` is mutable (`init`, `apply(..., mutable=[...])`), so
        `model.apply(variables, x)` is inference.
      return_features: return a dict instead of the logits: `stage1` ... `stageN` (each stage's
        output, NHWC in `dtype`: C2-C5 at strides 4-32 for ImageNet nets, strides 1-4 for CIFAR
        nets), `pooled` (the globally averaged last stage, float32 [N, C]) and, with a head,
        `logits`.

    Returns:
      float32 logits [N, num_classes]; with num_classes=0 the pooled features [N, C]; with
      return_features the dict above.
    """
    check_choice("shortcut", self.shortcut, SHORTCUTS)
    check_choice("stride_placement", self.stride_placement, STRIDE_PLACEMENTS)
    check_choice("stem", self.stem, ("cifar", "imagenet"))
    if self.num_classes < 0:
      raise ValueError(f"num_classes={self.num_classes} must be >= 0 (0 = no head: pooled features).")
    preact = self.block_cls in (PreActResidualBlock, PreActBottleneckBlock)
    conv = functools.partial(layers.conv, dtype=self.dtype)
    norm = layers.batch_norm(self, layers.resolve_train(self, train))
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
    features = {}
    for i, (size, width) in enumerate(zip(self.stage_sizes, widths)):
      x = stages.stage(x, block_cls, size, f"stage{i + 1}", scan=self.scan_blocks, filters=width,
                       conv=conv, norm=norm, strides=2 if i > 0 else 1, shortcut=self.shortcut, **extra)
      features[f"stage{i + 1}"] = x
    if preact:  # the last stage's sum is not yet activated; `pooled` reads it through final_bn
      x = nn.relu(norm(name="final_bn")(x))
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    features["pooled"] = x
    if self.num_classes:
      x = features["logits"] = layers.classifier(self.num_classes, x.shape[-1])(x)
    return features if return_features else x
