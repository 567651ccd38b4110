"""VGG (Simonyan & Zisserman 2014), the plain baseline of He et al. 2015, Fig. 3."""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models.layers import adaptive_avg_pool, batch_norm, conv, resolve_train


class VGG(nn.Module):
  """VGG (Simonyan & Zisserman 2014) with BN after every conv; the paper's Fig. 3 baseline is VGG-19.

  BN is our addition (the paper's VGG-19 has none); it changes neither the FLOPs nor the shape. The
  classifier is VGG's (two 4096-wide dense layers, no dropout) after a 7x7 adaptive pool, as torchvision.
  `train` as in `ResNet` (None: training exactly when `batch_stats` is mutable); num_classes=0 drops
  the last dense layer and returns fc2's 4096 ReLU features (float32).
  """
  stage_convs: Sequence[int] = (2, 2, 4, 4, 4)
  stage_widths: Sequence[int] = (64, 128, 256, 512, 512)
  num_classes: int = 1000
  classifier_width: int = 4096
  width_multiplier: float = 1.0
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_group_size: int = 0
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: Optional[bool] = None):
    if self.num_classes < 0:
      raise ValueError(f"num_classes={self.num_classes} must be >= 0 (0 = no head: fc2 features).")
    norm = batch_norm(self, resolve_train(self, train))
    x = jnp.asarray(x, self.dtype)
    for i, (n, w) in enumerate(zip(self.stage_convs, self.stage_widths)):
      for j in range(n):
        x = conv(max(1, int(round(w * self.width_multiplier))), (3, 3), dtype=self.dtype,
                 name=f"stage{i + 1}_conv{j + 1}")(x)
        x = nn.relu(norm(name=f"stage{i + 1}_bn{j + 1}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = adaptive_avg_pool(x, 7).reshape((x.shape[0], -1))
    # torchvision's VGG init for its dense layers: N(0, 0.01) weights, zero biases.
    dense = functools.partial(nn.Dense, param_dtype=jnp.float32,
                              kernel_init=nn.initializers.normal(0.01))
    for k in (1, 2):
      x = nn.relu(dense(self.classifier_width, dtype=self.dtype, name=f"fc{k}")(x))
    x = x.astype(jnp.float32)
    return dense(self.num_classes, name="head")(x) if self.num_classes else x
