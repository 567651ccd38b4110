"""A stage of blocks, unrolled or scanned, and conversion of parameters between the two layouts.

Unrolled, block j of stage i is the submodule `stageI_blockJ`. Scanned (`scan_blocks=True`), the first
block, which changes the shape, stays `stageI_block1`, and blocks 2..n share one `nn.scan` whose
variables are stacked on a leading axis under `stageI_scan/block`: XLA then compiles one block body
per stage, whatever the depth (ResNet-1202 unrolled does not even compile on a 2-core machine).
"""

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

SCAN_SUFFIX = "_scan"
_BLOCK = re.compile(r"(stage\d+)_block(\d+)$")


class _Body(nn.Module):
  """One scan iteration: a block applied to the carry."""
  block_cls: Any
  kwargs: dict

  @nn.compact
  def __call__(self, x, _):
    return self.block_cls(**self.kwargs, name="block")(x), None


def stage(x, block_cls, size: int, name: str, *, scan: bool, strides: int, **kwargs):
  """Applies `size` blocks named `{name}_block1..` (or block1 + `{name}_scan`) to `x`."""
  x = block_cls(strides=strides, name=f"{name}_block1", **kwargs)(x)
  if size == 1:
    return x
  if not scan:
    for j in range(2, size + 1):
      x = block_cls(name=f"{name}_block{j}", **kwargs)(x)
    return x
  scanned = nn.scan(_Body, variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
                    split_rngs={"params": True}, length=size - 1)
  x, _ = scanned(block_cls, kwargs, name=f"{name}{SCAN_SUFFIX}")(x, None)
  return x


def to_scanned(tree: dict) -> dict:
  """Unrolled -> scanned layout, for one collection (params or batch_stats) of a ResNet."""
  out, stacks = {}, {}
  for key, value in tree.items():
    m = _BLOCK.match(key)
    if m and int(m.group(2)) > 1:
      stacks.setdefault(m.group(1), []).append((int(m.group(2)), value))
    else:
      out[key] = value
  for prefix, blocks in stacks.items():
    blocks = [v for _, v in sorted(blocks, key=lambda jv: jv[0])]
    out[prefix + SCAN_SUFFIX] = {"block": jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)}
  return out


def to_unrolled(tree: dict) -> dict:
  """Scanned -> unrolled layout, the inverse of `to_scanned`."""
  out = {}
  for key, value in tree.items():
    if not key.endswith(SCAN_SUFFIX):
      out[key] = value
      continue
    prefix, stacked = key[:-len(SCAN_SUFFIX)], value["block"]
    for j in range(jax.tree_util.tree_leaves(stacked)[0].shape[0]):
      out[f"{prefix}_block{j + 2}"] = jax.tree_util.tree_map(lambda x, j=j: x[j], stacked)
  return out


def unstack_scanned(tree: dict) -> dict:
  """Any tree keyed like params (e.g. gradients) in per-block form: what metrics report per block."""
  return to_unrolled(tree) if any(k.endswith(SCAN_SUFFIX) for k in tree) else tree
