"""On-device data for datasets that fit in device memory (digits, CIFAR-10/100).

The decoded, normalised training set is put on the devices once; each step's batch is then drawn and
augmented (the paper's pad-crop-flip) inside the compiled step, as a pure function of (seed, step),
so the host does no per-step work and exact resume still holds. Tiny CIFAR nets on an accelerator
are otherwise bound by host input and dispatch, not arithmetic.

The order differs from the host pipeline's (this one draws with jax.random): `reference_batch` is its
specification, written example by example, and tests hold `sample_batch` to it.
"""

import jax
import jax.numpy as jnp
import numpy as np

PAD = 4  # He et al. 2015, sec. 4.2: 4 pixels of zero padding, random 32x32 crop, horizontal flip
AUGMENTS = ("none", "cifar")


def _keys(seed: int, step):
  base = jax.random.key(seed)
  return jax.random.fold_in(base, 0), jax.random.fold_in(jax.random.fold_in(base, 1), step)


def _epoch_permutation(order_key, epoch, n: int):
  return jax.random.permutation(jax.random.fold_in(order_key, epoch), n)


def example_indices(seed: int, step, batch_size: int, n: int):
  """Global batch `step` of a stream of per-epoch shuffles: example i lies in epoch i // n."""
  if batch_size > n:
    raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples held on device.")
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
  return (jax.random.randint(k1, (batch_size, 2), 0, 2 * PAD + 1),
          jax.random.bernoulli(k2, 0.5, (batch_size,)))


def sample_batch(data: dict, seed: int, step, batch_size: int, augment: str) -> dict:
  """The batch for `step` from on-device `data` ({"image", "label"}); traceable, vectorised."""
  if augment not in AUGMENTS:
    raise ValueError(f"data_on_device supports augment in {list(AUGMENTS)}, not {augment!r}.")
  n, h, w, _ = data["image"].shape
  idx = example_indices(seed, step, batch_size, n)
  images, labels = data["image"][idx], data["label"][idx]
  if augment == "cifar":
    offsets, flips = augment_params(seed, step, batch_size)
    padded = jnp.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    crop = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, im.shape[-1])))
    images = crop(padded, offsets)
    images = jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)
  return {"image": images, "label": labels}


def reference_batch(images: np.ndarray, labels: np.ndarray, seed: int, step: int, batch_size: int,
                    augment: str) -> dict:
  """`sample_batch` written out one example at a time in NumPy: its specification, for tests."""
  n, h, w, _ = images.shape
  idx = np.asarray(example_indices(seed, step, batch_size, n))
  out = []
  offsets, flips = (np.asarray(a) for a in augment_params(seed, step, batch_size))
  for b, i in enumerate(idx):
    image = images[i]
    if augment == "cifar":
      padded = np.zeros((h + 2 * PAD, w + 2 * PAD, image.shape[-1]), image.dtype)
      padded[PAD:PAD + h, PAD:PAD + w] = image
      y, x = offsets[b]
      image = padded[y:y + h, x:x + w]
      if flips[b]:
        image = image[:, ::-1]
    out.append(image)
  return {"image": np.stack(out), "label": labels[idx]}


def train_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
  """The decoded, normalised, un-augmented training set of a dataset that supports it."""
  if not hasattr(dataset, "train_arrays"):
    raise ValueError(f"dataset {getattr(dataset, 'name', dataset)!r} cannot be held on device; set "
                     "data_on_device=False.")
  return dataset.train_arrays()
