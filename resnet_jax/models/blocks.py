"""Post-activation blocks of He et al. 2015 (Fig. 2, Fig. 5): basic and bottleneck, residual and plain.

A plain block is the residual block with its shortcut removed, nothing more. Each block takes its conv
and norm as partials built once at the top of the network (`resnet.ResNet`).
"""

from typing import Any, Callable

import flax.linen as nn

from resnet_jax.models.layers import pad_shortcut

ModuleDef = Any
SHORTCUTS = ("A", "B", "C", "none")
STRIDE_PLACEMENTS = ("v1", "v1.5")  # where a bottleneck strides: its first 1x1 (v1) or its 3x3 (v1.5)


def shortcut_path(x, filters: int, strides: int, kind: str, conv: ModuleDef, norm: ModuleDef = None,
                  source=None):
  """The block's identity path, or None for a plain block. Options from the paper, section 3.3.

  The projection (B, C) and option A read `source` (default `x`; a pre-activation block passes its
  pre-activated input); `norm` None leaves the projection without BN, as pre-activation blocks have it.
  """
  if kind == "none":
    return None
  source = x if source is None else source
  changes = strides != 1 or x.shape[-1] != filters
  if kind == "C" or (kind == "B" and changes):
    y = conv(filters, (1, 1), strides, name="proj_conv")(source)
    return y if norm is None else norm(name="proj_bn")(y)
  if kind == "A" and changes:
    return pad_shortcut(source, filters, strides)
  return x


class Block(nn.Module):
  """The fields every block shares: width, the conv and norm partials, activation, stride, shortcut."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable = nn.relu
  strides: int = 1
  shortcut: str = "B"


def _merge(y, shortcut, act):
  # The addition sits after the last BN and before the final ReLU (paper, Fig. 2 and eq. 1).
  return act(y) if shortcut is None else act(y + shortcut)


class ResidualBlock(Block):
  """Basic block: conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU."""
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
    return _merge(y, shortcut_path(x, self.filters, self.strides, self.shortcut, self.conv, self.norm),
                  self.act)


class BottleneckBlock(Block):
  """1x1 (reduce) - 3x3 - 1x1 (x4), BN after each conv; shortcut; ReLU.

  `stride_placement` "v1" strides the first 1x1 as the paper does (Table 1 FLOPs); "v1.5" strides the
  3x3 as torchvision does, which costs ~8% more FLOPs and is ~0.5% more accurate.
  """
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
    return _merge(y, shortcut_path(x, out, self.strides, self.shortcut, self.conv, self.norm), self.act)


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
