"""Helpers shared by several test modules: small configs, comparisons, reference implementations."""

import importlib.util

import jax
import numpy as np

from resnet_jax.config import default_config
from resnet_jax.data import on_device
from resnet_jax.data.augment import CIFAR_PAD as PAD


def small_config(**overrides):
  """ResNet-8 on the digits for 6 steps, on ONE device: tests whose point is the device count (parity
  on 2, 4 or 8 simulated devices, uneven evaluation batches) ask for more."""
  config = default_config()
  config.update(model="resnet8", dataset="digits", batch_size=32, eval_batch_size=64, total_steps=6,
                learning_rate=0.1, lr_decay_steps=(4,), log_every_steps=2, eval_every_steps=0,
                checkpoint_every_steps=2, keep_checkpoints=10, num_devices=1)
  config.update(**overrides)
  return config


def max_abs_diff(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                           jax.tree_util.tree_leaves(b)))


def reference_batch(images: np.ndarray, labels: np.ndarray, seed: int, step: int, batch_size: int,
                    augment: str) -> dict:
  """`on_device.sample_batch` written out one example at a time in NumPy: its specification."""
  n, h, w, _ = images.shape
  idx = np.asarray(on_device.example_indices(seed, step, batch_size, n))
  out = []
  offsets, flips = (np.asarray(a) for a in on_device.augment_params(seed, step, batch_size))
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


def load_script(path: str, name: str):
  """A script of a folder that is not a package (benchmarks/, a results page's), imported by path."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
