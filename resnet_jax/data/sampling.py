"""The sampling plan: which examples, and which augmentation draws, make up each global batch.

Every training batch is a pure function of (seed, step): a run restarted at step k asks for batch k and
gets the same examples, in the same order, with the same augmentation, as an uninterrupted run. So the
checkpointed step IS the iterator state. Each process takes only its own slice of every global batch.
Evaluation batches cover the split once, in order, the last one padded and masked.
"""

import functools
from typing import Iterator

import jax
import numpy as np

from resnet_jax.data.augment import sample_params

_AUGMENT_STREAM = 1  # keeps augmentation draws independent of the (seed, epoch) shuffle stream


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def example_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
  """Indices of global batch `step`: a stream of per-epoch global shuffles of the n examples.

  Example i of the stream lies in epoch i // n; each epoch's order depends on (seed, epoch) only.
  Batches span epoch boundaries, so no example is ever dropped.
  """
  pos = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
  epochs = pos // n
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = _permutation(seed, int(epoch), n)[pos[sel] % n]
  return out


def this_shard() -> tuple[int, int]:
  """(process count, this process's index): which share of each global batch this process reads."""
  return jax.process_count(), jax.process_index()


def process_slice(x: np.ndarray, shard: tuple[int, int] | None = None) -> np.ndarray:
  """This process's contiguous share of a global batch (processes feed their own devices).

  `shard` is (process count, index), `this_shard()` if None. Data-loading worker processes are
  handed it, so that they never ask JAX (which would start a backend in each worker).
  """
  count, index = shard or this_shard()
  per = len(x) // count
  return x[index * per:(index + 1) * per]


def batch_plan(seed: int, step: int, batch_size: int, n: int, augment: str, color_std: float = 0.0,
               shard: tuple[int, int] | None = None):
  """This process's example indices and augmentation parameters for global batch `step`.

  Parameters are drawn for the whole global batch, then sliced: the global batch does not depend
  on the number of processes.
  """
  idx = example_indices(seed, step, batch_size, n)
  params = sample_params(augment, np.random.default_rng([seed, step, _AUGMENT_STREAM]), batch_size,
                         color_std)
  return process_slice(idx, shard), {k: process_slice(v, shard) for k, v in params.items()}


def num_eval_batches(batch_size: int, n: int) -> int:
  return -(-n // batch_size)


def eval_batch_plan(batch_size: int, n: int, j: int,
                    shard: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(indices, mask) of this process's slice of evaluation batch `j`; padding repeats example 0."""
  idx = np.arange(j * batch_size, (j + 1) * batch_size)
  mask = idx < n
  return process_slice(np.where(mask, idx, 0), shard), process_slice(mask, shard).astype(np.float32)


def eval_plan(batch_size: int, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """`eval_batch_plan` of every evaluation batch, in order."""
  for j in range(num_eval_batches(batch_size, n)):
    yield eval_batch_plan(batch_size, n, j)
