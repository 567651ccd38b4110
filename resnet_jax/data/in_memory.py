"""Datasets held decoded in host memory: scikit-learn's digits (real, no download) and synthetic data."""

import dataclasses
from typing import Iterator

import numpy as np

from resnet_jax.data import sampling
from resnet_jax.data.augment import Normalizer, pad_crop_flip

DIGITS_TRAIN = 1497  # of scikit-learn's 1,797 digits: the first 1,497 train, the last 300 test
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 1024, 256
SYNTHETIC_CLASSES = 10  # synthetic data's classes when num_classes is 0 ("the dataset's own")


@dataclasses.dataclass(frozen=True)
class InMemoryDataset:
  """A decoded, normalised dataset held in host memory (float32 NHWC images, int32 labels).

  `test_*` is the evaluation split: the test set, or the validation hold-out when one is configured.
  Its images are all one size, so `augment` is 'none' or 'cifar' (validated with the config).
  """
  name: str
  num_classes: int
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  augment: str = "none"
  device_normalizer = None  # held normalised already (not a field: `replace` and tests ignore it)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])

  @property
  def train_size(self) -> int:
    return len(self.train_labels)

  def train_batch(self, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """This process's share of global training batch `step` (0-based)."""
    idx, params = sampling.batch_plan(seed, step, batch_size, self.train_size, self.augment)
    images = self.train_images[idx]
    if self.augment == "cifar":
      images = pad_crop_flip(images, params["offset"], params["flip"])
    return {"image": images, "label": self.train_labels[idx]}

  def train_arrays(self) -> tuple[np.ndarray, np.ndarray]:
    """The whole normalised, un-augmented training split (for data_on_device)."""
    return self.train_images, self.train_labels

  def eval_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The whole evaluation split once, in order; the last batch is padded and masked (mask 0)."""
    for idx, mask in sampling.eval_plan(batch_size, len(self.test_labels)):
      yield {"image": self.test_images[idx], "label": self.test_labels[idx], "mask": mask}


def hold_out(images: np.ndarray, labels: np.ndarray, count: int):
  """Splits off the last `count` (validated: fewer than all) training examples as a validation set
  (the paper's 45k/5k)."""
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
  (train, train_y), (evals, eval_y) = ((images[:DIGITS_TRAIN], labels[:DIGITS_TRAIN]),
                                      (images[DIGITS_TRAIN:], labels[DIGITS_TRAIN:]))
  if validation_split:
    (train, train_y), (evals, eval_y) = hold_out(train, train_y, validation_split)
  norm = Normalizer.fit(normalization, train)
  return InMemoryDataset("digits", 10, norm(train), train_y, norm(evals), eval_y, augment)


def make_synthetic(image_size: int, num_classes: int, channels: int = 3,
                   train_size: int = SYNTHETIC_TRAIN, test_size: int = SYNTHETIC_TEST, seed: int = 0,
                   validation_split: int = 0) -> InMemoryDataset:
  """Random normal images with random labels: for benchmarks and plumbing tests, not for learning.

  Already standardised, so `normalization` does not apply.
  """
  rng = np.random.default_rng(seed)

  def split(n):
    return (rng.standard_normal((n, image_size, image_size, channels), np.float32),
            rng.integers(0, num_classes, n).astype(np.int32))

  train, test = split(train_size), split(test_size)
  if validation_split:
    train, test = hold_out(*train, validation_split)
  return InMemoryDataset("synthetic", num_classes, *train, *test)
