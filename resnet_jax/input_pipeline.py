"""Data sources behind one interface: each training batch is a pure function of (seed, step).

That property is what makes resume exact: a run restarted at step k asks for batch k and gets the
same examples, in the same order, with the same augmentation, as an uninterrupted run. So the
checkpointed train-state step IS the iterator state; nothing else needs saving. Batches are numpy dicts
{"image", "label"} (and "mask" for evaluation); each process gets only its own slice of every global
batch. Sources: `digits` and `synthetic` (in memory, below) and any TFDS image-classification dataset
(`resnet_jax.tfds_data`, read with random access from array_record files, batches built ahead by Grain
threads).
"""

import dataclasses
import functools
from typing import Callable, Iterator

import jax
import numpy as np

from resnet_jax import augment as aug

SOURCES = ("digits", "synthetic", "<any TFDS image-classification name, e.g. cifar10>")
_AUGMENT_STREAM = 1  # keeps augmentation draws independent of the (seed, epoch) shuffle stream
_READ_AHEAD_HORIZON = 2 ** 62  # "no end": read-ahead simply stops being consumed


@dataclasses.dataclass(frozen=True)
class InMemoryDataset:
  """A decoded, normalised dataset held in host memory (float32 NHWC images, int32 labels).

  `test_*` is the evaluation split: the test set, or the validation hold-out when one is configured.
  """
  name: str
  num_classes: int
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  augment: str = "none"

  def __post_init__(self):
    if self.augment not in ("none", "cifar"):
      raise ValueError(f"augment={self.augment!r} needs variable-size images from a TFDS dataset "
                       f"(e.g. imagenet2012); {self.name!r} supports 'none' or 'cifar'.")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])

  @property
  def train_size(self) -> int:
    return len(self.train_labels)

  def train_batch(self, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """This process's share of global training batch `step` (0-based)."""
    idx, params = batch_plan(seed, step, batch_size, self.train_size, self.augment)
    images = self.train_images[idx]
    if self.augment == "cifar":
      images = aug.pad_crop_flip(images, params["offset"], params["flip"])
    return {"image": images, "label": self.train_labels[idx]}

  def train_arrays(self) -> tuple[np.ndarray, np.ndarray]:
    """The whole normalised, un-augmented training split (for data_on_device)."""
    return self.train_images, self.train_labels

  def eval_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The whole evaluation split once, in order; the last batch is padded and masked (mask 0)."""
    for idx, mask in eval_plan(batch_size, len(self.test_labels)):
      yield {"image": self.test_images[idx], "label": self.test_labels[idx], "mask": mask}


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


def batch_plan(seed: int, step: int, batch_size: int, n: int, augment: str):
  """This process's example indices and augmentation parameters for global batch `step`.

  Parameters are drawn for the whole global batch, then sliced: the global batch does not depend
  on the number of processes.
  """
  idx = example_indices(seed, step, batch_size, n)
  params = aug.sample_params(augment, np.random.default_rng([seed, step, _AUGMENT_STREAM]), batch_size)
  return process_slice(idx), {k: process_slice(v) for k, v in params.items()}


def eval_plan(batch_size: int, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(indices, mask) of this process's slice of each evaluation batch; padding repeats example 0."""
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    mask = idx < n
    yield process_slice(np.where(mask, idx, 0)), process_slice(mask).astype(np.float32)


class ReadAhead:
  """Serves `fn(key, k)` for consecutive k, computed ahead in background threads by Grain.

  A request that does not continue the previous one (a resume, another seed) restarts the read-ahead
  at that step, so results never depend on the order of requests: each is `fn(key, k)`.
  `num_threads=0` computes every request synchronously.
  """

  def __init__(self, fn: Callable, num_threads: int, buffer: int):
    self.fn, self.num_threads, self.buffer = fn, num_threads, max(buffer, num_threads)
    self._key, self._next, self._iter = None, None, None

  def get(self, key, k: int):
    if not self.num_threads:
      return self.fn(key, k)
    if self._iter is None or (key, k) != (self._key, self._next):
      self._iter = self._start(key, k, _READ_AHEAD_HORIZON)
      self._key = key
    self._next = k + 1
    return next(self._iter)

  def run(self, key, start: int, stop: int) -> Iterator:
    """fn(key, start), ..., fn(key, stop - 1) in order, read ahead (finite; for evaluation)."""
    if not self.num_threads:
      return (self.fn(key, k) for k in range(start, stop))
    return self._start(key, start, stop)

  def _start(self, key, start: int, stop: int) -> Iterator:
    import grain  # pylint: disable=g-import-not-at-top

    ds = grain.MapDataset.range(start, stop).map(functools.partial(self.fn, key))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=self.num_threads,
                                                     prefetch_buffer_size=self.buffer)))


def hold_out(images: np.ndarray, labels: np.ndarray, count: int, what: str):
  """Splits off the last `count` training examples as a validation set (the paper's 45k/5k)."""
  if not 0 <= count < len(labels):
    raise ValueError(f"validation_split={count} must be in [0, {len(labels)}) for {what} "
                     f"({len(labels)} training examples).")
  cut = len(labels) - count
  return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def load_digits(normalization: str = "per_channel", validation_split: int = 0,
                augment: str = "none") -> InMemoryDataset:
  """scikit-learn's bundled 8x8 digits (1,797 real images, 10 classes): no download needed.

  A fixed split: the first 1,497 images train, the last 300 test (the data is ordered by writer,
  so the test digits come from writers the model has not seen). `validation_split` > 0 evaluates on
  the last that many of the 1,497 training images instead. Statistics come from the training part.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  images = (digits.images * (255 / 16)).astype(np.float32)[..., None]  # 0..16 -> the 0..255 scale
  labels = digits.target.astype(np.int32)
  (train, train_y), (evals, eval_y) = (images[:1497], labels[:1497]), (images[1497:], labels[1497:])
  if validation_split:
    (train, train_y), (evals, eval_y) = hold_out(train, train_y, validation_split, "digits")
  norm = aug.Normalizer.fit(normalization, train)
  return InMemoryDataset("digits", 10, norm(train), train_y, norm(evals), eval_y, augment)


def make_synthetic(image_size: int, num_classes: int, channels: int = 3, train_size: int = 1024,
                   test_size: int = 256, seed: int = 0, validation_split: int = 0) -> InMemoryDataset:
  """Random normal images with random labels: for benchmarks and plumbing tests, not for learning.

  Already standardised, so `normalization` does not apply.
  """
  rng = np.random.default_rng(seed)

  def split(n):
    return (rng.standard_normal((n, image_size, image_size, channels), np.float32),
            rng.integers(0, num_classes, n).astype(np.int32))

  train, test = split(train_size), split(test_size)
  if validation_split:
    train, test = hold_out(*train, validation_split, "synthetic")
  return InMemoryDataset("synthetic", num_classes, *train, *test)


def get_dataset(config, default_image_size: int):
  """The dataset named by `config.dataset`: digits, synthetic, or a TFDS dataset name."""
  if config.dataset == "digits":
    return load_digits(config.normalization, config.validation_split, config.augment)
  if config.dataset == "synthetic":
    ds = make_synthetic(config.image_size or default_image_size, config.num_classes or 10,
                        seed=config.seed, validation_split=config.validation_split)
    return dataclasses.replace(ds, augment=config.augment)
  from resnet_jax import tfds_data  # pylint: disable=g-import-not-at-top

  return tfds_data.TfdsDataset.from_config(config, default_image_size)
