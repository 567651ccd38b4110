"""A tiny ILSVRC2012 layout of generated JPEGs: input for `resnet-jax data-bench --data fake-imagenet`
(and the tests of ImageNet preparation), shaped like the real archives.
"""

import io
import os
import tarfile

import numpy as np

from resnet_jax.data.prepare import IMAGENET_FILES


def write_fake_imagenet(manual_dir: str, synsets=("n01440764", "n01443537"), per_class: int = 3,
                        num_val: int = 4, min_side: int = 64, max_side: int = 160, seed: int = 0,
                        jpegs=None) -> None:
  """A tiny ILSVRC2012 layout (train tar of per-synset tars, flat val tar) of random JPEGs.

  For tests and the JPEG throughput benchmark: image sizes vary (as ImageNet's do) and validation
  labels come from TFDS's own label list, exactly as for the real archives. `jpegs` (bytes, at least
  per_class x classes + num_val of them) replaces the generated images.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  os.makedirs(manual_dir, exist_ok=True)

  given = iter(jpegs) if jpegs is not None else None

  def jpeg():
    if given is not None:
      return next(given)
    h, w = rng.integers(min_side, max_side + 1, 2)
    pixels = rng.integers(0, 256, (h // 8, w // 8, 3), np.uint8).repeat(8, 0).repeat(8, 1)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()

  def add(tar, name, data):
    member = tarfile.TarInfo(name)
    member.size = len(data)
    tar.addfile(member, io.BytesIO(data))

  with tarfile.open(os.path.join(manual_dir, IMAGENET_FILES[0]), "w") as train:
    for synset in synsets:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as tar:
        for i in range(per_class):
          add(tar, f"{synset}_{i + 1}.JPEG", jpeg())
      add(train, f"{synset}.tar", inner.getvalue())
  with tarfile.open(os.path.join(manual_dir, IMAGENET_FILES[1]), "w") as val:
    for i in range(num_val):
      add(val, f"ILSVRC2012_val_{i + 1:08d}.JPEG", jpeg())
