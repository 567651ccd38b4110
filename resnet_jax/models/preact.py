"""Pre-activation blocks (He et al. 2016, "Identity Mappings in Deep Residual Networks").

BN-ReLU-conv ordering; the sum is left un-activated, so the identity path stays clean end to end.
"""

from typing import Any, Callable

import flax.linen as nn

from resnet_jax.models.layers import pad_shortcut

ModuleDef = Any


class PreActResidualBlock(nn.Module):
  """Pre-activation basic block (He et al. 2016): BN-ReLU-conv twice; the sum is not activated."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable = nn.relu
  strides: int = 1
  shortcut: str = "B"

  @nn.compact
  def __call__(self, x):
    pre = self.act(self.norm(name="bn1")(x))
    y = self.conv(self.filters, (3, 3), self.strides, name="conv1")(pre)
    y = self.conv(self.filters, (3, 3), name="conv2")(self.act(self.norm(name="bn2")(y)))
    # Where shapes change, the projection (or option-A subsampling) reads the pre-activated input.
    sc = _preact_shortcut(x, pre, self.filters, self.strides, self.shortcut, self.conv)
    return y if sc is None else y + sc


class PreActBottleneckBlock(nn.Module):
  """Pre-activation bottleneck (He et al. 2016); strides the 3x3 unless stride_placement is v1."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable = nn.relu
  strides: int = 1
  shortcut: str = "B"
  stride_placement: str = "v1.5"
  expansion: int = 4

  @nn.compact
  def __call__(self, x):
    s1, s2 = (self.strides, 1) if self.stride_placement == "v1" else (1, self.strides)
    pre = self.act(self.norm(name="bn1")(x))
    y = self.conv(self.filters, (1, 1), s1, name="conv1")(pre)
    y = self.conv(self.filters, (3, 3), s2, name="conv2")(self.act(self.norm(name="bn2")(y)))
    out = self.filters * self.expansion
    y = self.conv(out, (1, 1), name="conv3")(self.act(self.norm(name="bn3")(y)))
    sc = _preact_shortcut(x, pre, out, self.strides, self.shortcut, self.conv)
    return y if sc is None else y + sc


def _preact_shortcut(x, pre, filters, strides, kind, conv):
  if kind == "none":
    return None
  changes = strides != 1 or x.shape[-1] != filters
  if kind == "C" or (kind == "B" and changes):
    return conv(filters, (1, 1), strides, name="proj_conv")(pre)
  return pad_shortcut(pre, filters, strides) if (kind == "A" and changes) else x
