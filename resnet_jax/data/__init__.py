"""Data: every training batch a pure function of (seed, step), from any source, augmented one way.

What lives here: `sampling` (the plan: example indices, augmentation draws, each process's slice,
evaluation batches), `augment` (pad-crop-flip, inception and scale crops, normalisation: one
implementation each), `in_memory` (digits, synthetic), `tfds_builder` (a TFDS dataset found,
downloaded or mirrored to local disk), `tfds_source` (any TFDS image-classification dataset, read
with random access from array_record), `readahead` (Grain threads building batches ahead),
`on_device` (the training set on the devices, batches drawn inside the compiled step), and `prepare`
(TFDS datasets built offline from the original files).

What it may import: numpy, jax, Pillow, Grain, TFDS, `resnet_jax.checks` and `resnet_jax.storage`;
nothing from `models`, `training` or `experiments`. TensorFlow is needed only by `prepare`.
"""

import dataclasses

from resnet_jax.data.in_memory import InMemoryDataset, hold_out, load_digits, make_synthetic
from resnet_jax.data.sampling import batch_plan, eval_plan, example_indices, process_slice

__all__ = ["get_dataset", "InMemoryDataset", "load_digits", "make_synthetic", "hold_out",
           "example_indices", "batch_plan", "eval_plan", "process_slice"]


def get_dataset(config, default_image_size: int):
  """The dataset named by `config.dataset`: digits, synthetic, or a TFDS dataset name."""
  if config.dataset in ("digits", "synthetic") and config.eval_crops != "center":
    raise ValueError(f"eval_crops={config.eval_crops!r} crops variable-size images (ImageNet); "
                     f"{config.dataset} images are tested whole. Set eval_crops='center'.")
  if config.dataset == "digits":
    return load_digits(config.normalization, config.validation_split, config.augment)
  if config.dataset == "synthetic":
    ds = make_synthetic(config.image_size or default_image_size, config.num_classes or 10,
                        channels=config.synthetic_channels, seed=config.seed,
                        validation_split=config.validation_split)
    return dataclasses.replace(ds, augment=config.augment)
  from resnet_jax.data import tfds_source  # pylint: disable=g-import-not-at-top  # TFDS is heavy

  return tfds_source.TfdsDataset.from_config(config, default_image_size)
