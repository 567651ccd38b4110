"""A run's derived facts, computed once from the validated config and the devices it runs on.

Each fact here (the batch each device holds, the evaluation batch the compiled step takes and its
layout, the image side, the data's image shape and classes) used to be worked out where it was
needed; now the trainer derives them once (`Trainer.derived`) and every layer reads that value
(STYLE.md, principle 15; MaxText's `pyconfig` derives its batch sizes the same way).
"""

import dataclasses
import math
from typing import Optional

from resnet_jax import data, models


@dataclasses.dataclass(frozen=True)
class Derived:
  """What a validated config means on given devices."""
  num_devices: int          # devices the step runs on (all processes')
  num_processes: int        # processes feeding them
  batch_size: int           # the global training batch (config.batch_size; divisible by both)
  eval_batch_size: int      # the global evaluation batch the step compiles for: config's, padded
  image_size: int           # the side variable-size images are cropped to (`image_size`)
  eval_layout: data.EvalLayout  # the test view an evaluation batch holds
  image_shape: tuple = ()   # (H, W, C), the images the network sees: the data's (`with_data`)
  num_classes: int = 0      # the data's classes (`with_data`)

  @property
  def device_batch_size(self) -> int:
    """The training examples each device holds (what a BN layer sees under pmap)."""
    return self.batch_size // self.num_devices

  def with_data(self, dataset) -> "Derived":
    """These facts and the data's own, from a dataset or a `data.DataSpec`: known once it opens."""
    return dataclasses.replace(self, image_shape=tuple(dataset.image_shape),
                               num_classes=dataset.num_classes)


def eval_batch_size(requested: int, num_devices: int, num_processes: int) -> int:
  """`requested` rounded up to a multiple of the devices and processes.

  The evaluation split is already cut into padded, masked batches (`data.sampling.eval_plan`), so a
  batch a few examples larger changes no result: every example is still counted once. Rounding up
  lets every preset evaluate on 1, 4, 8 or 16 devices unchanged (ImageNet's 100 ten-crop images
  become 104 on 8 devices), where requiring divisibility stopped each of them on an 8-device VM.
  """
  unit = math.lcm(num_devices, num_processes)
  return -(-requested // unit) * unit


def image_size(config) -> int:
  """The side of the images the network sees: `image_size`, or the model's own (0 = the model's)."""
  return config.image_size or models.default_image_size(config.model)


def data_spec(config) -> Optional[data.DataSpec]:
  """What the run knows of its dataset without reading it (None: a TFDS dataset not in the table)."""
  return data.spec(config, image_size(config))


def device_counts(config, devices: list) -> tuple[int, int]:
  """(devices the step runs on, processes feeding them) of `config` given `devices`."""
  return config.num_devices or len(devices), len({d.process_index for d in devices})


def derive(config, devices: list) -> Derived:
  """The derived facts of `config` (validated against `devices`) on `devices`, before any data is
  read; `Derived.with_data` adds the data's."""
  n, processes = device_counts(config, devices)
  layout = data.EvalLayout(config.eval_crops,
                           tuple(config.eval_scales) if config.eval_crops == "multiscale" else ())
  return Derived(num_devices=n, num_processes=processes, batch_size=config.batch_size,
                 eval_batch_size=eval_batch_size(config.eval_batch_size, n, processes),
                 image_size=image_size(config), eval_layout=layout)
