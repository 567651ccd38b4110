"""Analyses of trained checkpoints: the layer-response statistics of the paper's Fig. 7."""

import re

import jax
import numpy as np

from resnet_jax.models import stages
from resnet_jax.training import trainer as trainer_lib


def _layer_order(path) -> tuple:
  """Network order of an intermediate's path: stage, block, then the BN index inside the block."""
  name = jax.tree_util.keystr(path)
  nums = [int(x) for x in re.findall(r"stage(\d+)_block(\d+)", name)[0]] if "stage" in name else [0, 0]
  return tuple(nums)


def response_stds(run_dir: str, num_examples: int = 500) -> list[float]:
  """Std of each layer's response (after BN, before ReLU/addition) on test images, network order.

  As in He et al. 2015, Fig. 7: the responses are the BN outputs of every conv inside the blocks, the
  net in inference mode (running BN statistics), from the newest checkpoint of `run_dir`. The std is
  over all elements of the layer's output for the first `num_examples` test images. Returns [] when
  the run has no checkpoint.
  """
  try:  # one device: a forward pass on a few hundred images needs no more
    trainer, state = trainer_lib.restore(run_dir, num_devices=1)
  except trainer_lib.NoCheckpointError:
    return []
  batch = next(iter(trainer.dataset.eval_batches(num_examples)))
  normalize = getattr(trainer.dataset, "device_normalizer", None)  # ImageNet's come uint8
  batch = batch if normalize is None else normalize(batch)
  images = batch["image"][batch["mask"] > 0]
  _, inter = jax.jit(lambda v, x: trainer.model.apply(v, x, train=False, mutable=["intermediates"]))(
      {"params": state.params, "batch_stats": state.batch_stats}, images)
  leaves = jax.tree_util.tree_flatten_with_path(stages.unstack_scanned(inter["intermediates"]))[0]
  blocks = sorted(((p, v) for p, v in leaves), key=lambda pv: _layer_order(pv[0]))
  # Leaves of one block's "response" tuple come in call order: conv1's BN, conv2's BN, ...
  return [float(np.std(np.asarray(v))) for _, v in blocks]
