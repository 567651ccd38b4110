"""JPEGs cut from real photographs: the input of the input-pipeline benchmarks.

Generated JPEGs of flat 8x8 blocks (`fake_imagenet`) decode about 1.2x faster than photographs of
the same size, so a throughput measured on them flatters the pipeline. scikit-learn ships two real
photographs (china.jpg and flower.jpg, 427x640), so no download is needed: each JPEG here is a
random window of one of them, at ImageNet's usual sizes (sides 300-500 px; ImageNet's average is about
400x350) and quality 90, mirrored at random so that repeated windows differ. The set is a pure
function of (count, seed).
"""

import io

import numpy as np

MIN_SIDE, MAX_SIDE = 300, 500
QUALITY = 90


def photo_jpegs(count: int, seed: int = 0, min_side: int = MIN_SIDE,
                max_side: int = MAX_SIDE) -> list[bytes]:
  """`count` JPEG files (bytes) cut from scikit-learn's sample photographs."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top

  photos = load_sample_images().images  # two (427, 640, 3) uint8 photographs
  rng = np.random.default_rng(seed)
  out = []
  for i in range(count):
    photo = photos[i % len(photos)]
    h = int(rng.integers(min(min_side, photo.shape[0]), min(max_side, photo.shape[0]) + 1))
    w = int(rng.integers(min(min_side, photo.shape[1]), min(max_side, photo.shape[1]) + 1))
    y, x = rng.integers(0, photo.shape[0] - h + 1), rng.integers(0, photo.shape[1] - w + 1)
    window = photo[y:y + h, x:x + w]
    if rng.random() < 0.5:
      window = window[:, ::-1]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(window)).save(buf, format="JPEG", quality=QUALITY)
    out.append(buf.getvalue())
  return out
