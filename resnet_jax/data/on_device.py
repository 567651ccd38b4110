"""On-device data for datasets that fit in device memory (digits, CIFAR-10/100).

The decoded, normalised training set is put on the devices once; each step's batch is then drawn and
augmented (the paper's pad-crop-flip) inside the compiled step, as a pure function of (seed, step),
so the host does no per-step work and exact resume still holds. Tiny CIFAR nets on an accelerator
are otherwise bound by host input and dispatch, not arithmetic.

The order differs from the host pipeline's (this one draws with jax.random, so it can be traced);
the augmentation is the host's own `augment.pad_crop_flip`, run with jax.numpy. A test holds
`sample_batch` to a specification written example by example.
"""

import jax
import jax.numpy as jnp

from resnet_jax.data.augment import CIFAR_PAD, pad_crop_flip


def _keys(seed: int, step):
  base = jax.random.key(seed)
  return jax.random.fold_in(base, 0), jax.random.fold_in(jax.random.fold_in(base, 1), step)


def _epoch_permutation(order_key, epoch, n: int):
  return jax.random.permutation(jax.random.fold_in(order_key, epoch), n)


def example_indices(seed: int, step, batch_size: int, n: int):
  """Global batch `step` of a stream of per-epoch shuffles: example i lies in epoch i // n.

  `batch_size` <= n (validated with the config: data_on_device).
  """
  order_key, _ = _keys(seed, step)
  pos = step * batch_size + jnp.arange(batch_size)
  first = (step * batch_size) // n
  # A batch spans at most two epochs, since batch_size <= n.
  perm = jnp.concatenate([_epoch_permutation(order_key, first, n),
                          _epoch_permutation(order_key, first + 1, n)])
  return perm[pos - first * n]


def augment_params(seed: int, step, batch_size: int):
  _, aug_key = _keys(seed, step)
  k1, k2 = jax.random.split(aug_key)
  return (jax.random.randint(k1, (batch_size, 2), 0, 2 * CIFAR_PAD + 1),
          jax.random.bernoulli(k2, 0.5, (batch_size,)))


def sample_batch(data: dict, seed: int, step, batch_size: int, augment: str) -> dict:
  """The batch for `step` from on-device `data` ({"image", "label"}); traceable, vectorised.

  `augment` is 'none' or 'cifar': on-device data is fixed-size (validated with the config).
  """
  n = data["image"].shape[0]
  idx = example_indices(seed, step, batch_size, n)
  images, labels = data["image"][idx], data["label"][idx]
  if augment == "cifar":
    offsets, flips = augment_params(seed, step, batch_size)
    images = pad_crop_flip(images, offsets, flips, xp=jnp)
  return {"image": images, "label": labels}


class DeviceNormalizer:
  """A host `augment.Normalizer` applied on the devices to batches the host left uint8.

  Sending uint8 crops and normalising on the device takes the host's float32 pass off each image
  (666 -> 786 images/s per core on photographs, docs/results/input_pipeline) and sends a quarter of
  the bytes. The arithmetic is the host's, in float32 and in its order (x * (1/255) + PCA offset -
  mean, / std); XLA may fuse the multiply-add, so values differ from the host's by float32 rounding
  (<= 5e-7 on standardised pixels, tested). Only uint8 images are normalised: the evaluation views
  the host normalises itself (ten crops, several scales) come as float32 and pass through.
  """

  OFFSET_KEY = "pca_offset"  # (..., C) per-image PCA colour offsets sent beside uint8 images

  def __init__(self, normalizer):
    self.mean, self.std = normalizer.mean, normalizer.std
    self._apply = None

  def __call__(self, batch: dict) -> dict:
    """`batch` (placed on the devices) with its uint8 images normalised and the offsets consumed."""
    if self._apply is None:
      self._apply = jax.jit(self.normalize)
    batch = dict(batch)
    offsets = batch.pop(self.OFFSET_KEY, None)
    if getattr(batch["image"], "dtype", None) == jnp.uint8:
      batch["image"] = self._apply(batch["image"], offsets)
    return batch

  def normalize(self, images, offsets=None):
    x = images.astype(jnp.float32) * jnp.float32(1 / 255)
    if offsets is not None:
      x = x + offsets.astype(jnp.float32)[..., None, None, :]
    x = x - self.mean
    return x if self.std is None else x / self.std
