"""Pre-activation blocks (He et al. 2016, "Identity Mappings in Deep Residual Networks").

BN-ReLU-conv ordering; the sum is left un-activated, so the identity path stays clean end to end.
"""

import flax.linen as nn

from resnet_jax.models.blocks import Block, shortcut_path


class PreActResidualBlock(Block):
  """Pre-activation basic block (He et al. 2016): BN-ReLU-conv twice; the sum is not activated."""

  @nn.compact
  def __call__(self, x):
    pre = self.act(self.norm(name="bn1")(x))
    y = self.conv(self.filters, (3, 3), self.strides, name="conv1")(pre)
    y = self.conv(self.filters, (3, 3), name="conv2")(self.act(self.norm(name="bn2")(y)))
    # Where shapes change, the projection (or option-A subsampling) reads the pre-activated input.
    sc = shortcut_path(x, self.filters, self.strides, self.shortcut, self.conv, source=pre)
    return y if sc is None else y + sc


class PreActBottleneckBlock(Block):
  """Pre-activation bottleneck (He et al. 2016); strides the 3x3 unless stride_placement is v1."""
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
    sc = shortcut_path(x, out, self.strides, self.shortcut, self.conv, source=pre)
    return y if sc is None else y + sc

