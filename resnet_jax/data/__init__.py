"""Data: every training batch a pure function of (seed, step), from any source, augmented one way.

What lives here: `sampling` (the plan: example indices, augmentation draws, each process's slice,
evaluation batches), `augment` (pad-crop-flip, inception and scale crops, normalisation: one
implementation each), `in_memory` (digits, synthetic), `tfds_builder` (a TFDS dataset found,
downloaded or mirrored to local disk), `tfds_source` (any TFDS image-classification dataset, read
with random access from array_record), `readahead` (Grain threads or worker processes building
batches ahead), `on_device` (the training set on the devices, batches drawn inside the compiled
step), and `prepare` (TFDS datasets built offline from the original files). `spec` says what a run
needs to know of its data (shapes, classes, sizes) without reading any, for the datasets we know;
`EvalLayout` how an evaluation batch holds the test view. The sources trust a validated config
(`resnet_jax.training.validation` checks every key, once).

What it may import: numpy, jax, Pillow, Grain, TFDS, `resnet_jax.checks` and `resnet_jax.run`;
nothing from `models`, `training` or `experiments`. TensorFlow is needed only by `prepare`.
"""

import dataclasses
from typing import Optional

from resnet_jax.data.augment import TEN_CROP_VIEWS
from resnet_jax.data.in_memory import (DIGITS_TRAIN, InMemoryDataset, hold_out, load_digits,
                                       make_synthetic, SYNTHETIC_CLASSES, SYNTHETIC_TRAIN)
from resnet_jax.data.sampling import batch_plan, eval_plan, example_indices, process_slice

__all__ = ["get_dataset", "spec", "DataSpec", "EvalLayout", "InMemoryDataset", "load_digits",
           "make_synthetic", "hold_out", "example_indices", "batch_plan", "eval_plan",
           "process_slice"]


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a run knows of a dataset before reading it: enough to validate a config against it, and to
  compile the step for it (shapes) without the data (`resnet-jax compile`)."""
  image_shape: tuple[int, int, int]
  num_classes: int
  train_size: int          # the stored training split, before any validation hold-out
  fixed_size: bool         # every image the same size (CIFAR), or any size (ImageNet): crops
  in_memory: bool          # decoded into host memory at start (digits, synthetic)
  # A dataset's `device_normalizer` (on_device.DeviceNormalizer) normalises on the devices the uint8
  # batches its host side leaves; None (a spec, the in-memory datasets): batches come normalised.
  device_normalizer = None


@dataclasses.dataclass(frozen=True)
class EvalLayout:
  """The test view as an evaluation batch holds it (`eval_crops`, derived once per run:
  `training.derived.Derived.eval_layout`): the source makes it, the compiled step is shaped for it.

  "center": one view, images (B, H, W, C); "ten": the ten crops, (B, TEN_CROP_VIEWS, H, W, C);
  "multiscale": a tuple of one (B, s, s, C) array per scale s of `scales`. The step averages the
  softmax scores of an example's views, whichever layout holds them (`training.step.eval_step`).
  """
  crops: str = "center"
  scales: tuple[int, ...] = ()

  def image_shapes(self, batch: int, image_shape: tuple[int, int, int]):
    """The shape of a batch's images, or for "multiscale" the tuple of each scale's shape."""
    if self.crops == "multiscale":
      return tuple((batch, s, s, image_shape[-1]) for s in self.scales)
    views = (TEN_CROP_VIEWS,) if self.crops == "ten" else ()
    return (batch, *views, *image_shape)


# TFDS datasets whose layout is known without opening them: (side or None if sizes vary, channels,
# classes, training examples).
KNOWN_TFDS = {
    "cifar10": (32, 3, 10, 50_000), "cifar100": (32, 3, 100, 50_000),
    "imagenet2012": (None, 3, 1000, 1_281_167),
}


def spec(config, image_size: int) -> Optional[DataSpec]:
  """The DataSpec of `config.dataset`, or None for a TFDS dataset this table does not know.

  `image_size` is the side the network sees (`training.derived.image_size`); fixed-size datasets
  keep their own.
  """
  if config.dataset == "digits":
    return DataSpec((8, 8, 1), 10, DIGITS_TRAIN, True, True)
  if config.dataset == "synthetic":
    return DataSpec((image_size, image_size, config.synthetic_channels),
                    config.num_classes or SYNTHETIC_CLASSES, SYNTHETIC_TRAIN, True, True)
  from resnet_jax.data.tfds_builder import base_name  # pylint: disable=g-import-not-at-top

  known = KNOWN_TFDS.get(base_name(config.dataset))
  if known is None:
    return None
  side, channels, classes, train = known
  size = side or image_size
  return DataSpec((size, size, channels), classes, train, side is not None, False)


def get_dataset(config, image_size: int, eval_layout: EvalLayout = EvalLayout(), *, check=None,
                normalize_on_device: bool = False):
  """The dataset named by `config.dataset` (validated): digits, synthetic, or a TFDS dataset name
  (`image_size` as for `spec`; `eval_layout` the run's, which in-memory data, all one size, holds
  as "center"; `check` as for `tfds_source.TfdsDataset`). `normalize_on_device`: variable-size
  images may come uint8, with the dataset's `device_normalizer` to apply on the devices (a trainer
  does; library users get float32)."""
  if config.dataset == "digits":
    return load_digits(config.normalization, config.validation_split, config.augment)
  if config.dataset == "synthetic":
    shape = spec(config, image_size)
    ds = make_synthetic(shape.image_shape[0], shape.num_classes, channels=shape.image_shape[-1],
                        seed=config.seed, validation_split=config.validation_split)
    return dataclasses.replace(ds, augment=config.augment)
  from resnet_jax.data import tfds_source  # pylint: disable=g-import-not-at-top  # TFDS is heavy

  return tfds_source.TfdsDataset.from_config(config, image_size, eval_layout, check=check,
                                             normalize_on_device=normalize_on_device)
