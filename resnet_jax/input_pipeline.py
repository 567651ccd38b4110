"""Data sources behind one interface: each training batch is a pure function of (seed, step).

That property is what makes resume exact: a run restarted at step k asks for batch k and gets the
same examples, in the same order, as an uninterrupted run. Batches are numpy dicts {"image", "label"}
(and "mask" for evaluation); each process gets only its own slice of every global batch.
"""

import dataclasses
import functools
from typing import Iterator

import jax
import numpy as np

SOURCES = ("digits", "synthetic")


@dataclasses.dataclass(frozen=True)
class InMemoryDataset:
  """A decoded, normalised dataset held in host memory (float32 NHWC images, int32 labels)."""
  name: str
  num_classes: int
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])

  @property
  def train_size(self) -> int:
    return len(self.train_labels)

  def train_batch(self, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """This process's share of global training batch `step` (0-based)."""
    idx = example_indices(seed, step, batch_size, self.train_size)
    idx = process_slice(idx)
    return {"image": self.train_images[idx], "label": self.train_labels[idx]}

  def eval_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The whole test split once, in order; the last batch is padded and masked (mask 0)."""
    n = len(self.test_labels)
    for start in range(0, n, batch_size):
      idx = np.arange(start, start + batch_size)
      mask = idx < n
      idx = np.where(mask, idx, 0)
      idx, mask = process_slice(idx), process_slice(mask)
      yield {"image": self.test_images[idx], "label": self.test_labels[idx],
             "mask": mask.astype(np.float32)}


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


def process_slice(x: np.ndarray) -> np.ndarray:
  """This process's contiguous share of a global batch (processes feed their own devices)."""
  count, index = jax.process_count(), jax.process_index()
  per = len(x) // count
  return x[index * per:(index + 1) * per]


def _standardise(train: np.ndarray, test: np.ndarray):
  # Per-channel standardisation with training-set statistics, so the test set sees the same transform.
  mean = train.mean(axis=(0, 1, 2))
  std = train.std(axis=(0, 1, 2))
  return (train - mean) / std, (test - mean) / std


def load_digits() -> InMemoryDataset:
  """scikit-learn's bundled 8x8 digits (1,797 real images, 10 classes): no download needed.

  A fixed split: the first 1,497 images train, the last 300 test (the data is ordered by writer,
  so the test digits come from writers the model has not seen).
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  images = (digits.images.astype(np.float32) / 16.0)[..., None]
  labels = digits.target.astype(np.int32)
  train, test = _standardise(images[:1497], images[1497:])
  return InMemoryDataset("digits", 10, train.astype(np.float32), labels[:1497],
                         test.astype(np.float32), labels[1497:])


def make_synthetic(image_size: int, num_classes: int, channels: int = 3, train_size: int = 1024,
                   test_size: int = 256, seed: int = 0) -> InMemoryDataset:
  """Random normal images with random labels: for benchmarks and plumbing tests, not for learning."""
  rng = np.random.default_rng(seed)

  def split(n):
    return (rng.standard_normal((n, image_size, image_size, channels), np.float32),
            rng.integers(0, num_classes, n).astype(np.int32))

  return InMemoryDataset("synthetic", num_classes, *split(train_size), *split(test_size))


def get_dataset(config, default_image_size: int) -> InMemoryDataset:
  """The dataset named by `config.dataset`."""
  if config.dataset == "digits":
    return load_digits()
  if config.dataset == "synthetic":
    return make_synthetic(config.image_size or default_image_size, config.num_classes or 10,
                          seed=config.seed)
  raise ValueError(f"dataset={config.dataset!r} is not one of {list(SOURCES)}.")
