"""Host-side augmentation and normalisation, vectorised with NumPy over the batch.

Random parameters are drawn for the whole GLOBAL batch from an RNG keyed by (seed, step) and then
sliced per process, so the global batch is the same on any number of processes. Crop boxes are
(y0, x0, height, width) in the source image's pixels (floats); decoding, cropping and resizing, the
only per-example work, are `decode`'s.
"""

import numpy as np


AUGMENTS = ("none", "cifar", "inception", "scale")
NORMALIZATIONS = ("per_channel", "per_pixel_mean", "torchvision")
# torchvision's ImageNet standardisation (transforms.Normalize in its weights' preprocessing), in
# [0, 1] pixels: what its pretrained ResNets expect, so converted weights see the inputs they learnt on.
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
# The test view: one centre crop, the paper's 10-crop testing (Tables 2-4), or its multi-scale testing
# (Tables 4-5): the central square at several scales of the shorter side, scores averaged.
EVAL_CROPS = ("center", "ten", "multiscale")
TEN_CROP_VIEWS = 10  # eval_crops="ten": the four corner crops and the centre crop, and their mirrors
COLOR_AUGMENTS = ("none", "pca")
# AlexNet's colour augmentation (Krizhevsky et al. 2012, sec. 4.1), which He et al. 2015 use on
# ImageNet (sec. 3.4, "the standard color augmentation in [21]"): add to every pixel of an RGB image
# in [0, 1] the vector eigvec @ (alpha * eigval), alpha ~ N(0, std) per image (std 0.1). These are
# the eigenvalues and eigenvectors (columns) of the RGB covariance of ImageNet's training pixels as
# published with fb.resnet.torch (datasets/imagenet.lua) and used by torchvision's references.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))
CIFAR_PAD = 4              # He et al. 2015, sec. 4.2: "4 pixels are padded on each side"
INCEPTION_SCALE = (0.08, 1.0)  # Szegedy et al. 2015 crop area range, as in torchvision
INCEPTION_RATIO = (3 / 4, 4 / 3)
INCEPTION_ATTEMPTS = 10    # torchvision's RandomResizedCrop: 10 tries, then a centre crop
SCALE_RANGE = (256, 480)   # sec. 3.4: shorter side sampled in [256, 480] for a 224 crop
SCALE_CROP = 224           # the crop SCALE_RANGE is stated for; other sizes scale the range with it
EVAL_CROP_FRACTION = 0.875  # resize to 256, centre crop 224 (224 / 256)


def sample_params(augment: str, rng: np.random.Generator, batch_size: int,
                  color_std: float = 0.0) -> dict[str, np.ndarray]:
  """The random numbers one global batch needs; each array's leading axis is the batch.

  `color_std` > 0 adds the PCA colour augmentation's alphas, drawn after everything else so that
  the other draws do not change with it.
  """
  params = {"flip": rng.random(batch_size) < 0.5} if augment != "none" else {}
  if augment == "cifar":
    params["offset"] = rng.integers(0, 2 * CIFAR_PAD + 1, (batch_size, 2))
  elif augment == "inception":
    params["u"] = rng.random((batch_size, INCEPTION_ATTEMPTS, 4))
  elif augment == "scale":
    params["u"] = rng.random((batch_size, 3))
  if color_std > 0:
    params["alpha"] = rng.normal(0.0, color_std, (batch_size, 3))
  return params


def pca_offsets(alpha: np.ndarray) -> np.ndarray:
  """(B, 3) RGB offsets in [0, 1] units from the PCA alphas (B, 3): eigvec @ (alpha * eigval)."""
  return (np.asarray(alpha) * np.asarray(PCA_EIGVAL)) @ np.asarray(PCA_EIGVEC).T


def pad_crop_flip(images, offset, flip, pad: int = CIFAR_PAD, xp=np):
  """Zero-pads by `pad`, takes an HxW crop at `offset` (B, 2), mirrors where `flip`: one gather.

  The paper's CIFAR augmentation (sec. 4.2). `xp` is the array module: numpy for the host pipeline,
  jax.numpy inside the compiled step for on-device data; both run this same code.
  """
  b, h, w, _ = images.shape
  padded = xp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = offset[:, 0, None] + xp.arange(h)
  cols = offset[:, 1, None] + xp.arange(w)
  cols = xp.where(flip[:, None], cols[:, ::-1], cols)
  return padded[xp.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def flip_images(images: np.ndarray, flip: np.ndarray) -> np.ndarray:
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def inception_boxes(u: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
  """Random-resized-crop boxes (B, 4) from uniforms `u` (B, attempts, 4), torchvision's rule.

  Each attempt draws an area fraction in INCEPTION_SCALE and a log-uniform aspect ratio in
  INCEPTION_RATIO; the first attempt that fits wins, else the largest centred crop of clamped ratio.
  """
  h, w = heights[:, None].astype(np.float64), widths[:, None].astype(np.float64)
  area = h * w * (INCEPTION_SCALE[0] + (INCEPTION_SCALE[1] - INCEPTION_SCALE[0]) * u[..., 0])
  lo, hi = np.log(INCEPTION_RATIO[0]), np.log(INCEPTION_RATIO[1])
  ratio = np.exp(lo + (hi - lo) * u[..., 1])
  cw, ch = np.round(np.sqrt(area * ratio)), np.round(np.sqrt(area / ratio))
  fits = (cw >= 1) & (ch >= 1) & (cw <= w) & (ch <= h)
  first = np.argmax(fits, axis=1)
  pick = lambda a: np.take_along_axis(a, first[:, None], axis=1)[:, 0]
  ch, cw = pick(ch), pick(cw)
  y0 = np.floor(pick(u[..., 2]) * (h[:, 0] - ch + 1))
  x0 = np.floor(pick(u[..., 3]) * (w[:, 0] - cw + 1))
  # Fallback (no attempt fits): the whole image, cropped to the nearest allowed aspect ratio.
  fh, fw = heights.astype(np.float64), widths.astype(np.float64)
  fw = np.where(fw / fh > INCEPTION_RATIO[1], np.round(fh * INCEPTION_RATIO[1]), fw)
  fh = np.where(fw / fh < INCEPTION_RATIO[0], np.round(fw / INCEPTION_RATIO[0]), fh)
  ok = fits.any(axis=1)
  boxes = np.stack([y0, x0, ch, cw], axis=1)
  fallback = np.stack([(heights - fh) // 2, (widths - fw) // 2, fh, fw], axis=1)
  return np.where(ok[:, None], boxes, fallback)


def scale_boxes(u: np.ndarray, heights: np.ndarray, widths: np.ndarray, size: int) -> np.ndarray:
  """The paper's scale augmentation as crop boxes: shorter side resized to S, a random size x size crop.

  S is uniform in SCALE_RANGE scaled by size / SCALE_CROP (exactly [256, 480] for 224 crops); the crop of the
  resized image is the box of side size / f in the original, f = S / shorter side.
  """
  lo, hi = (r * size / SCALE_CROP for r in SCALE_RANGE)
  s = np.floor(lo + (hi - lo + 1) * u[:, 0])
  side = size * np.minimum(heights, widths) / s
  y0 = u[:, 1] * (heights - side)
  x0 = u[:, 2] * (widths - side)
  return np.stack([y0, x0, side, side], axis=1)


def ten_crop_boxes(heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
  """The 10-crop test view's five boxes per image (B, 5, 4); their mirror images are the other five
  (TEN_CROP_VIEWS in all).

  He et al. 2015 (sec. 3.4) compare models with "the standard 10-crop testing" (Krizhevsky et al.
  2012): the four corner and the centre crops of the image resized so its shorter side is 256, each
  224 wide (here: EVAL_CROP_FRACTION of the shorter side, resized to the model's size), and flips.
  """
  side = EVAL_CROP_FRACTION * np.minimum(heights, widths).astype(np.float64)
  bottom, right = heights - side, widths - side
  corners = [(0 * side, 0 * side), (0 * side, right), (bottom, 0 * side), (bottom, right),
             (bottom / 2, right / 2)]
  return np.stack([np.stack([y, x, side, side], axis=1) for y, x in corners], axis=1)


def center_boxes(heights: np.ndarray, widths: np.ndarray,
                 fraction: float = EVAL_CROP_FRACTION) -> np.ndarray:
  """Evaluation view: resize the shorter side to size / 0.875, centre crop size (square boxes).

  `fraction` of the shorter side is the square's side: 1.0 is the whole shorter side.
  """
  side = fraction * np.minimum(heights, widths).astype(np.float64)
  return np.stack([(heights - side) / 2, (widths - side) / 2, side, side], axis=1)


def crop_boxes(augment: str, params: dict, heights: np.ndarray, widths: np.ndarray,
               size: int) -> np.ndarray:
  """Each image's box (B, 4): the training crop of `augment` ('inception' or 'scale') drawn from
  `params`, else the evaluation view's centre square."""
  if augment == "inception":
    return inception_boxes(params["u"], heights, widths)
  if augment == "scale":
    return scale_boxes(params["u"], heights, widths, size)
  return center_boxes(heights, widths)


class Normalizer:
  """uint8 images -> float32: per-channel standardisation or the paper's per-pixel mean subtraction.

  Pixels are first scaled to [0, 1]; `mean` is (C,) or (H, W, C), `std` (C,) or None (the paper
  subtracts the mean image only, sec. 4.2).
  """

  def __init__(self, mean: np.ndarray, std=None):
    self.mean = np.asarray(mean, np.float32)
    self.std = None if std is None else np.asarray(std, np.float32)

  @classmethod
  def fit(cls, kind: str, images: np.ndarray) -> "Normalizer":
    """Statistics of uint8 `images` (N, H, W, C) in float64, so 50k images sum exactly enough.

    "torchvision" takes no statistics: it is torchvision's fixed RGB mean and std.
    """
    if kind == "torchvision":
      return cls.torchvision()
    return cls.from_sums(kind, *moments(images))

  @classmethod
  def torchvision(cls) -> "Normalizer":
    """torchvision's ImageNet mean and std (RGB images only: validated with the config)."""
    return cls(np.asarray(TORCHVISION_MEAN), np.asarray(TORCHVISION_STD))

  @classmethod
  def from_sums(cls, kind: str, count: int, total: np.ndarray, total_sq: np.ndarray) -> "Normalizer":
    """From per-pixel sums of x and x^2 (x in [0, 1]) over `count` images."""
    if kind == "per_pixel_mean":
      return cls(total / count)
    n = count * total.shape[0] * total.shape[1]
    mean = total.sum(axis=(0, 1)) / n
    std = np.sqrt(np.maximum(total_sq.sum(axis=(0, 1)) / n - mean ** 2, 0.0))
    return cls(mean, std)

  def __call__(self, images: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """Normalised images; `offsets` (B, C), in [0, 1] units, are added to each image's pixels first
    (the PCA colour augmentation)."""
    # The arithmetic is x * (1/255) + offset - mean, / std in float32, exactly as written, so results
    # are bit-identical to the whole-array expression; but it runs image by image, in place, on rows
    # of W*C values. Broadcasting a (C,) vector makes NumPy's inner loop 3 elements long, and four
    # passes over a whole 224x224 float32 batch leave the cache: together ~4x the time (measured
    # 1.2-1.9 ms against 0.39 ms per 224x224 image, one core).
    images = np.asarray(images)
    out = np.empty(images.shape, np.float32)
    write = self.rows_writer(out, offsets)
    for i, image in enumerate(images.reshape(-1, *images.shape[-3:])):
      write(i, image)
    return out

  def rows_writer(self, out: np.ndarray, offsets: np.ndarray | None = None):
    """write(i, image): normalises one (H, W, C) image into out[i] (out: (..., H, W, C) float32)."""
    h, w, c = out.shape[-3:]
    rows = out.reshape(-1, h, w * c)
    as_rows = lambda v: np.tile(v, w) if v.ndim == 1 else v.reshape(h, w * c)
    mean = as_rows(self.mean)
    std = None if self.std is None else as_rows(self.std)
    if offsets is not None:  # one (C,) offset per image of a (B, H, W, C) batch
      offsets = np.tile(np.asarray(offsets, np.float32).reshape(len(rows), c), (1, w))

    def write(i: int, image: np.ndarray) -> None:
      row = rows[i]
      row.reshape(h, w, c)[...] = image
      row *= np.float32(1 / 255)
      if offsets is not None:
        row += offsets[i]
      row -= mean
      if std is not None:
        row /= std

    return write

  def at_size(self, side: int) -> "Normalizer":
    """This normaliser for side x side images: a per-pixel mean image of another size becomes its
    per-channel average (multi-scale testing feeds the net several sizes)."""
    if self.mean.ndim == 3 and self.mean.shape[0] != side:
      return Normalizer(self.mean.mean(axis=(0, 1)), self.std)
    return self


def moments(images: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
  """(count, per-pixel sum, per-pixel sum of squares) of 0..255 images, scaled to [0, 1].

  Summed in float64 (exact enough over 50k images) from a float32 copy: half the memory of a float64
  one, which matters for chunks of 224x224 images.
  """
  x = images.astype(np.float32) * np.float32(1 / 255)
  return len(images), x.sum(axis=0, dtype=np.float64), np.square(x).sum(axis=0, dtype=np.float64)
