"""Layers the networks share: conv, batch norm over groups of examples, classifier, option-A shortcut,
pooling, and the initialisations they are declared with."""

import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


# He initialisation (He et al. 2015b, "Delving Deep into Rectifiers"), fan-out and untruncated normal as
# in torchvision, so ReLU nets keep their activation variance through depth.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_linear_init(fan_in: int) -> Callable:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default `nn.Linear` init, for weight and bias.

  torchvision's ResNet leaves its classifier at this default (its init loop touches only convs and
  BN), and the paper does not say otherwise. Flax's default, LeCun normal with std 1/sqrt(fan_in),
  is sqrt(3) times wider: it started ResNet-20 on the digits at loss 3.5 instead of ln 10 = 2.3.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def classifier(features: int, fan_in: int, *, name: str = "head", dtype=jnp.float32) -> nn.Dense:
  """The dense head of a ResNet, initialised as torchvision's (`torch_linear_init`)."""
  init = torch_linear_init(fan_in)
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=init, bias_init=init,
                  name=name)


def conv(features, kernel_size, strides=1, *, dtype, name):
  """Bias-free conv (BN follows) with He init, in `dtype` with float32 parameters."""
  # Explicit k//2 padding (not "SAME") matches the paper's Caffe / torchvision layers for stride 2 too.
  pad = [(k // 2, k // 2) for k in kernel_size]
  return nn.Conv(features, kernel_size, (strides, strides), padding=pad, use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=he_normal, name=name)


def bn_group_problem(group_size: int, batch: int,
                     num_devices: Optional[int] = None) -> Optional[str]:
  """Why BN groups of `group_size` examples cannot be cut from `num_devices` batches of `batch`
  examples (what one BN layer sees: a device's share under pmap; under jit the global batch, and
  `num_devices` None: no group spans devices), or None when they can (`group_size` 0: the whole
  batch; a group larger than a global batch: that batch).

  The rule's one statement: `BatchNorm` raises it for a model applied directly, and
  `resnet_jax.training.validation` for a config, before a run builds anything.
  """
  if group_size and group_size < batch and batch % group_size:
    return (f"bn_group_size={group_size} does not divide the batch of {batch} examples each BN "
            "layer sees; choose a divisor (or 0 for whole-batch statistics).")
  if num_devices is not None and group_size > batch:  # a group spans devices: whole devices, evenly
    k = group_size // batch
    if group_size % batch or num_devices % k:
      return (f"bn_group_size={group_size} spans devices of {batch} examples each; it must be a "
              f"multiple of {batch} that divides their {num_devices * batch} examples.")
  return None


def _group_moments(x: jax.Array, group_size: int, axis_name: Optional[str]):
  """Per-group mean and mean of squares over (examples, H, W), computed in float32.

  Returns arrays broadcastable against `x` reshaped to [groups, group_size, ..., C], plus that shape.
  `group_size` 0 means the whole batch: under pmap that is every device's batch (synchronised BN);
  under jit over a mesh the batch is already global, so XLA reduces across devices for us.
  """
  b = x.shape[0]
  n = None if axis_name is None else jax.lax.axis_size(axis_name)
  problem = bn_group_problem(group_size, b, n)
  if problem:
    raise ValueError(problem)
  if group_size and group_size < b:
    x = x.reshape((b // group_size, group_size) + x.shape[1:])
  else:
    x = x[None]
  axes = tuple(range(1, x.ndim - 1))
  mean = jnp.mean(x, axes, keepdims=True)
  mean2 = jnp.mean(jnp.square(x), axes, keepdims=True)
  if axis_name is not None and (group_size == 0 or group_size > b):
    # Statistics span devices: whole batch (0) or groups of several devices' examples.
    groups = None
    k = group_size // b
    if group_size and k < n:  # k = n: one group holds the whole global batch, i.e. synchronised BN
      groups = [list(range(i, i + k)) for i in range(0, n, k)]
    mean = jax.lax.pmean(mean, axis_name, axis_index_groups=groups)
    mean2 = jax.lax.pmean(mean2, axis_name, axis_index_groups=groups)
  return x, mean, mean2


class BatchNorm(nn.Module):
  """Batch normalisation whose statistics come from groups of `group_size` examples.

  Groups make the numerics independent of how many devices run the step: group_size=32 reproduces the
  paper's per-GPU statistics (batch 256 on 8 GPUs) on any number of devices, and 0 is synchronised BN
  over the global batch. Statistics and parameters are float32 whatever the computation dtype.
  Variable names match `flax.linen.BatchNorm` (params scale/bias, batch_stats mean/var).
  """
  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  group_size: int = 0
  axis_name: Optional[str] = None
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    x32 = x.astype(jnp.float32)
    if not (self.use_running_average or self.is_initializing()
            or self.is_mutable_collection("batch_stats")):
      # Flax's own message ("collection batch_stats is immutable") does not say what to change.
      raise ValueError(
          f"{'/'.join(self.path)}: BatchNorm in training mode (train=True) updates its running "
          "statistics, but the 'batch_stats' collection is immutable. Call "
          "model.apply(variables, x, train=True, mutable=['batch_stats']) and keep the returned "
          "batch_stats, or pass train=False for inference (running statistics).")
    if self.use_running_average:
      y = (x32 - ra_mean.value) * (scale * jax.lax.rsqrt(ra_var.value + self.epsilon)) + bias
      return y.astype(self.dtype)
    xg, mean, mean2 = _group_moments(x32, self.group_size, self.axis_name)
    var = jnp.maximum(mean2 - jnp.square(mean), 0.0)
    if not self.is_initializing():
      # Running statistics: the average over groups, identical on every device.
      flat_axes = tuple(range(mean.ndim - 1))
      batch_mean, batch_var = jnp.mean(mean, flat_axes), jnp.mean(var, flat_axes)
      if self.axis_name is not None and self.group_size:  # group statistics differ per device
        batch_mean = jax.lax.pmean(batch_mean, self.axis_name)
        batch_var = jax.lax.pmean(batch_var, self.axis_name)
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * batch_mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * batch_var
    y = (xg - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
    return y.reshape(x.shape).astype(self.dtype)


def resolve_train(module: nn.Module, train: Optional[bool]) -> bool:
  """`train`, or for None: training exactly when the `batch_stats` collection is mutable.

  So `model.apply(variables, x)` is inference, `model.apply(variables, x, mutable=["batch_stats"])`
  and `model.init(...)` are training, and an explicit True/False always wins (our train step
  passes it explicitly).
  """
  return module.is_mutable_collection("batch_stats") if train is None else bool(train)


def batch_norm(network: nn.Module, train: bool) -> Callable:
  """The BatchNorm partial a network hands its blocks, from the network's BN and dtype fields.

  `network` has fields bn_momentum, dtype, bn_group_size and axis_name (ResNet, VGG).
  """
  return functools.partial(BatchNorm, use_running_average=not train, momentum=network.bn_momentum,
                           dtype=network.dtype, group_size=network.bn_group_size,
                           axis_name=network.axis_name)


def pad_shortcut(x: jax.Array, filters: int, strides: int) -> jax.Array:
  """Option A of He et al. 2015: subsample by taking every `strides`-th pixel, zero-fill new channels."""
  if strides > 1:
    x = x[:, ::strides, ::strides, :]
  extra = filters - x.shape[-1]
  if extra < 0:
    raise ValueError(f"option-A shortcut cannot reduce channels ({x.shape[-1]} -> {filters}).")
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra))) if extra else x


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
  """torchvision's AdaptiveAvgPool2d((size, size)) on NHWC: fixed bins, so any input size works."""

  def matrix(n):
    m = np.zeros((size, n), np.float32)
    for i in range(size):
      lo, hi = (i * n) // size, -((-(i + 1) * n) // size)
      m[i, lo:hi] = 1.0 / (hi - lo)
    return jnp.asarray(m, x.dtype)

  return jnp.einsum("ih,jw,nhwc->nijc", matrix(x.shape[1]), matrix(x.shape[2]), x)
