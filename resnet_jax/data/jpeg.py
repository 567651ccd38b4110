"""JPEG decoding straight into NumPy with libjpeg-turbo (simplejpeg), at full or reduced DCT scale.

PIL decodes a JPEG through its own chunked buffers and then copies it into an image; simplejpeg
calls TurboJPEG once into a NumPy array: the same pixels (both run libjpeg-turbo's accurate integer
IDCT and fancy upsampling; tested bit for bit on photographs) in ~0.6-0.8 ms against PIL's 0.9-1.1
per 300-500 px photograph (one core, Intel Xeon, 2026-12-03). Anything it cannot decode to the
pixels PIL would give (not a JPEG, CMYK or YCCK, a luma image from a colour JPEG, a damaged file)
returns None and the caller uses PIL, which also names what is wrong with a damaged file.

libjpeg-turbo can also decode at M/8 of the size (M = 1..16) by truncating the DCT, skipping most
of the work when the crop is larger than the network's input. That is an approximation of the
exact path (decode, crop, antialiased resize); its error is measured by
`benchmarks/input_pipeline.py --psnr` and the default (`DCT_SCALING`) set from it
(docs/results/input_pipeline).
"""

import math

import numpy as np

# Off by default: on 300-500 px photographs it decoded 38% of training crops (all evaluation views) at
# a reduced scale, 43.1 dB (38.3 dB) PSNR against the exact path, and did not raise images/s per core
# (786 against 786, Intel Xeon, 2026-12-03, docs/results/input_pipeline).
DCT_SCALING = False
# What TurboJPEG decodes to the same pixels as PIL's decode plus `convert` to the mode asked for:
# RGB from YCbCr, RGB or grey (replicated, as PIL's L -> RGB), grey from grey. Not L from colour
# (PIL's RGB -> L weights differ from the JPEG's Y), nor CMYK/YCCK (PIL inverts Adobe's CMYK).
_DECODABLE = {3: ("YCbCr", "RGB", "Gray"), 1: ("Gray",)}
_SCALES = tuple(m / 8 for m in range(1, 17))  # libjpeg-turbo's DCT scaling factors


def _simplejpeg():
  try:
    import simplejpeg  # pylint: disable=g-import-not-at-top
  except ImportError:  # an optional speed-up (the `train` extra): PIL decodes without it
    return None
  return simplejpeg


def header(data: bytes, channels: int) -> "tuple[int, int] | None":
  """(height, width) of a JPEG this module decodes exactly as PIL would, else None."""
  sj = _simplejpeg()
  if sj is None or data[:2] != b"\xff\xd8":
    return None
  try:
    height, width, space, _ = sj.decode_jpeg_header(data)
  except ValueError:  # damaged: PIL says what is wrong
    return None
  return (height, width) if space in _DECODABLE[channels] else None


def decode(data: bytes, channels: int, height: int, width: int,
           need: "tuple[float, float]" = (0, 0)) -> "tuple[np.ndarray, float, float] | None":
  """(pixels HxWxC uint8, y scale, x scale) of a JPEG `header` accepted, or None if it fails.

  `need` (rows, columns), if nonzero, is the smallest decoded size that keeps every crop of the
  image at least the network's input: libjpeg-turbo then decodes at the smallest M/8 scale that
  gives it (only with DCT_SCALING); the scales map original pixel coordinates to decoded ones.
  """
  sj = _simplejpeg()
  min_h, min_w = (math.ceil(n) for n in need)
  if min_h >= height or min_w >= width:  # one side needs every pixel: no scaling (0 = no minimum)
    min_h = min_w = 0
  try:
    pixels = sj.decode_jpeg(data, colorspace="RGB" if channels == 3 else "GRAY",
                            min_height=min_h, min_width=min_w)
  except ValueError:  # a damaged file the header did not show: PIL's error names it
    return None
  h, w = pixels.shape[:2]
  if (h, w) == (height, width):
    return pixels, 1.0, 1.0
  # The scale M/8 TurboJPEG chose gives ceil(side * M / 8) pixels; box coordinates scale by M/8.
  scale = next((s for s in _SCALES if math.ceil(height * s) == h and math.ceil(width * s) == w),
               None)
  return (pixels, scale, scale) if scale else (pixels, h / height, w / width)
