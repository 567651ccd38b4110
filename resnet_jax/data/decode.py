"""Host decoding: encoded images to cropped, resized (and optionally normalised) uint8 arrays.

Only this runs per example (libjpeg-turbo through `jpeg`, else PIL, in C code that releases the GIL
so read-ahead threads overlap); the boxes and the other random parameters are drawn for the whole
batch by `augment`.
"""

import contextlib
import io

import numpy as np

from resnet_jax.data import jpeg
from resnet_jax.data.augment import Normalizer, crop_boxes, pca_offsets
from resnet_jax.run.errors import DataError


# Freed PIL image blocks kept for reuse. Pillow's default (0) returns each decoded image's and each
# resize's memory to the system, so the next image page-faults it back in: keeping them took 15% off
# a decoded, cropped and resized 224x224 photograph (1.89 -> 1.61 ms, one core). A block is one
# image's pixels (up to 16 MiB; ~0.6 MiB for a 400x375 RGB photograph), so the cache stays small.
PIL_BLOCKS_CACHED = 64


def keep_image_blocks(blocks: int = PIL_BLOCKS_CACHED) -> None:
  """Lets PIL reuse up to `blocks` freed image blocks in this process (never lowers a larger cap)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if Image.core.get_blocks_max() < blocks:
    Image.core.set_blocks_max(blocks)


class UnreadableImageError(DataError):
  """Encoded image `position` of a batch cannot be decoded; its reader names the record."""

  def __init__(self, position: int, cause):
    super().__init__(f"image {position} of the batch cannot be decoded ({cause})")
    self.position, self.cause = position, cause


@contextlib.contextmanager
def image_errors(position: int):
  """Turns PIL's errors for bytes it cannot decode into an UnreadableImageError naming `position`."""
  from PIL import UnidentifiedImageError  # pylint: disable=g-import-not-at-top

  try:
    yield
  except UnidentifiedImageError as e:  # its message shows a BytesIO object's address
    raise UnreadableImageError(position, "not in an image format PIL recognises") from e
  except (OSError, SyntaxError) as e:  # PIL's for a corrupt or truncated image: no I/O here
    raise UnreadableImageError(position, e) from e


def load_images(data, channels: int) -> list:
  """Decoded PIL images of the encoded images `data` (UnreadableImageError names a bad one)."""
  images = []
  for i, d in enumerate(data):
    with image_errors(i):
      image = open_image(d, channels)
      image.load()
    images.append(image)
  return images


def open_image(data: bytes, channels: int):
  """A lazily decoded PIL image (header only) in the mode `channels` asks for."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top

  try:  # naming the usual formats skips PIL's probe of every plugin (~25 us of ~100 per CIFAR image)
    image = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
  except UnidentifiedImageError:
    image = Image.open(io.BytesIO(data))
  mode = "RGB" if channels == 3 else "L"
  return image if image.mode == mode else image.convert(mode)


def to_array(image, channels: int) -> np.ndarray:
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if channels == 1 else array


def crop_resize(image, box, size: int, channels: int) -> np.ndarray:
  """Crops `box` (y0, x0, h, w) and resizes it to size x size (antialiased bilinear), uint8 HWC."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  y0, x0, h, w = (float(v) for v in box)
  out = image.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + w, y0 + h))
  return to_array(out, channels)


def decode_crops(data, augment: str, params: dict, size: int, channels: int,
                 normalizer: Normalizer | None = None, dct_scaling: "bool | None" = None
                 ) -> np.ndarray:
  """(B, size, size, C): encoded images `data` cropped by `crop_boxes`, resized, and mirrored where
  `params["flip"]` says (evaluation: augment 'none' and no flips).

  uint8, or with `normalizer` float32 `normalizer(uint8 crops, PCA offsets of params["alpha"])`,
  bit for bit, each crop normalised while it is in cache instead of in a second pass. JPEGs are
  decoded by libjpeg-turbo straight into NumPy (`jpeg`: the same pixels as PIL's decode), others by
  PIL; `dct_scaling` (default `jpeg.DCT_SCALING`) decodes JPEGs at the smallest DCT scale that
  keeps each crop at least `size` (an approximation, see `jpeg`).
  """
  dct_scaling = jpeg.DCT_SCALING if dct_scaling is None else dct_scaling
  images, sides = [], []
  for i, d in enumerate(data):  # headers only: each image is decoded as it is cropped, while hot
    side = jpeg.header(d, channels)
    image = None
    if side is None:
      with image_errors(i):
        image = open_image(d, channels)
      side = (image.height, image.width)
    images.append(image)
    sides.append(side)
  heights = np.array([s[0] for s in sides])
  widths = np.array([s[1] for s in sides])
  boxes = crop_boxes(augment, params, heights, widths, size)
  flips = params.get("flip", np.zeros(len(images), bool))
  # Each crop is written once, mirrored as it is copied in: the same pixels as stacking the crops
  # and then `flip_images`, without two more passes over the batch (~0.2 ms per 224x224 image).
  shape = (len(images), size, size, channels)
  if normalizer is None:
    out = np.empty(shape, np.uint8)
    write = out.__setitem__
  else:
    out = np.empty(shape, np.float32)
    write = normalizer.rows_writer(out, pca_offsets(params["alpha"]) if "alpha" in params else None)
  for i, (d, image, side, box) in enumerate(zip(data, images, sides, boxes)):
    with image_errors(i):
      if image is None:
        image, box = _decode_jpeg(d, channels, side, box, size if dct_scaling else 0)
      crop = crop_resize(image, box, size, channels)
    write(i, crop[:, ::-1] if flips[i] else crop)
  return out


def _decode_jpeg(data: bytes, channels: int, side, box, size: int):
  """(PIL image, box in its pixels) of a JPEG `jpeg.header` accepted: decoded by libjpeg-turbo (at a
  reduced DCT scale keeping the box at least `size` if `size`), or by PIL if that fails."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  (h, w), box = side, np.asarray(box, np.float64)
  need = (h * size / box[2], w * size / box[3]) if size else (0, 0)
  decoded = jpeg.decode(data, channels, h, w, need)
  if decoded is None:  # PIL decodes it, or raises the error that names what is wrong
    return open_image(data, channels), box
  pixels, sy, sx = decoded
  return Image.fromarray(pixels[..., 0] if channels == 1 else pixels), box * (sy, sx, sy, sx)
