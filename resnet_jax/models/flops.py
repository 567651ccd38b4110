"""Parameter and multiply-add counts of a model, computed from shapes (no weights are allocated).

Multiply-adds count what the paper's Table 1 counts: convolutions and dense layers of one forward pass
for one image. BN, ReLU, pooling and additions are left out, as there.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def count_params(model: nn.Module, image_size: int, channels: int = 3) -> int:
  """Number of trainable parameters (the `params` collection; BN running statistics excluded)."""
  shapes = _init_shapes(model, image_size, channels)
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes["params"]))


def count_macs(model: nn.Module, image_size: int, channels: int = 3) -> int:
  """Multiply-adds of one forward pass for a single image of side `image_size`."""
  return profile(model, image_size, channels)["macs"]


def profile(model: nn.Module, image_size: int, channels: int = 3) -> dict[str, int]:
  """{"params": ..., "macs": ...} from one shape-only trace (deep nets trace slowly, so trace once)."""
  macs = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod = context.module
    if context.method_name == "__call__" and isinstance(mod, (nn.Conv, nn.Dense)):
      per_output = args[0].shape[-1]  # input features
      if isinstance(mod, nn.Conv):
        per_output = math.prod(mod.kernel_size) * per_output // mod.feature_group_count
      macs.append(math.prod(out.shape[1:]) * per_output)  # out.shape[0] is the batch of 1
    return out

  with nn.intercept_methods(record):
    shapes = _init_shapes(model, image_size, channels)
  params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes["params"]))
  return {"params": params, "macs": sum(macs)}


def _init_shapes(model, image_size, channels):
  x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  return jax.eval_shape(lambda rng, x: model.init(rng, x, train=False), jax.random.key(0), x)
