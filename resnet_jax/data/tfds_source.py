"""TFDS image-classification datasets (cifar10, cifar100, imagenet2012, ...) read with random access.

Storage is TFDS's `array_record` format, read through `builder.as_data_source` (the engine of
`tfds.data_source`): random access by example index, no TensorFlow at training time. The batch for
step k is built from indices that are a pure function of (seed, step), decoded and augmented with
NumPy/PIL, and Grain threads build the next batches ahead (`readahead.ReadAhead`).
TensorFlow is needed only to BUILD a dataset (download_and_prepare or `resnet-jax prepare`).
"""

import contextlib

import numpy as np

from resnet_jax.data import DataSpec, EvalLayout
from resnet_jax.data import augment as aug
from resnet_jax.data import decode
from resnet_jax.data import on_device
from resnet_jax.data import sampling
from resnet_jax.data.readahead import ReadAhead
from resnet_jax.data.tfds_builder import base_name, open_builder, tfds_module
from resnet_jax.run.errors import ConfigError, DataError

# Datasets whose `test` split carries no labels (ImageNet's test images are unlabelled: label -1).
_EVAL_ON_VALIDATION = ("imagenet2012",)
_STATS_CHUNK_PIXELS = 2 ** 23  # values per statistics chunk (32 MiB as float32): 500 CIFAR, 55 at 224
_STATS_CACHE = {}  # (name, data_dir, train size, images used, kind, side) -> Normalizer, per process


class TfdsDataset:
  """A TFDS dataset behind the interface of `in_memory.InMemoryDataset` (train_batch, eval_batches).

  The arguments are config keys, validated before the dataset opens
  (`resnet_jax.training.validation`), and trusted here. `image_size` is the side variable-size
  images are cropped to (fixed-size images keep theirs). `check`, if given, is called with the
  dataset's `DataSpec` as read from its metadata, before any example is read: how a config is
  checked against a dataset that `resnet_jax.data.KNOWN_TFDS` does not list
  (`training.validation.metadata_check`).
  """

  def __init__(self, name: str, data_dir: str = "", augment: str = "none",
               normalization: str = "per_channel", validation_split: int = 0, image_size: int = 224,
               normalization_examples: int = 50000, data_threads: int = 0, prefetch_batches: int = 2,
               cache_dir: str = "", eval_layout: EvalLayout = EvalLayout(), color_std: float = 0.0,
               data_workers: int = 0, check=None, normalize_on_device: bool = False):
    self.eval_layout, self.color_std = eval_layout, color_std
    builder = open_builder(name, data_dir, cache_dir)
    self._data_dir = str(builder.data_dir)
    info = builder.info
    if not info.supervised_keys or len(info.supervised_keys) != 2:
      raise ConfigError(f"dataset={name!r} has no (image, label) supervised keys: not an image-classification "
                       "dataset.")
    self.image_key, self.label_key = info.supervised_keys
    self.name, self.augment = name, augment
    self.num_classes = info.features[self.label_key].num_classes
    native = tuple(info.features[self.image_key].shape)
    self.channels = native[-1]
    self.fixed = None not in native  # CIFAR: every image 32x32x3; ImageNet: any size
    self.size = native[0] if self.fixed else image_size

    decoders = {self.image_key: tfds_module().decode.SkipDecoding()}  # we decode (and crop) with PIL
    decode.keep_image_blocks()
    self._train = builder.as_data_source(split="train", decoders=decoders)
    n = len(self._train)
    if check is not None:
      check(DataSpec(self.image_shape, self.num_classes, n, self.fixed, False))
    self.train_size = n - validation_split
    if validation_split:  # the last examples of the stored (TFDS-shuffled) train split
      self._eval, self._eval_offset, self.eval_size = self._train, self.train_size, validation_split
      self.eval_split = f"train[-{validation_split}:]"
    else:
      split = "validation" if (base_name(name) in _EVAL_ON_VALIDATION
                               or "test" not in info.splits) else "test"
      self._eval = builder.as_data_source(split=split, decoders=decoders)
      self._eval_offset, self.eval_size, self.eval_split = 0, len(self._eval), split

    self._ahead = ReadAhead(self._load_train, data_threads, prefetch_batches, data_workers)
    self._eval_ahead = ReadAhead(self._load_eval, data_threads, prefetch_batches, data_workers)
    key = (name, str(builder.data_dir), self.train_size, min(normalization_examples, self.train_size),
           normalization, self.size)
    if normalization == "torchvision":  # fixed constants: no pass over the images
      _STATS_CACHE[key] = aug.Normalizer.torchvision()
    if key not in _STATS_CACHE:
      _STATS_CACHE[key] = self._fit_normalizer(normalization, key[3])
    self.normalizer = _STATS_CACHE[key]
    # Variable-size images (ImageNet) may leave the host uint8, normalised by the trainer on the
    # devices; fixed-size ones (CIFAR) are normalised here, before their zero padding (sec. 4.2).
    self.device_normalizer = (on_device.DeviceNormalizer(self.normalizer)
                              if normalize_on_device and not self.fixed else None)
    self._host_normalizes = self.device_normalizer is None

  @classmethod
  def from_config(cls, config, image_size: int, eval_layout: EvalLayout = EvalLayout(), *,
                  check=None, normalize_on_device: bool = False) -> "TfdsDataset":
    """The dataset of a validated config; `image_size` and `eval_layout` are the run's
    (`training.derived.Derived`): the side variable-size images are cropped to (fixed-size ones keep
    theirs) and the test view; `check` as above; `normalize_on_device`: leave their normalisation
    to `device_normalizer`."""
    return cls(config.dataset, config.data_dir, config.augment, config.normalization,
               config.validation_split, image_size, config.normalization_examples,
               config.data_threads, config.prefetch_batches, config.data_cache_dir,
               eval_layout, config.color_augment_std if config.color_augment == "pca" else 0.0,
               config.data_workers, check, normalize_on_device)

  def close(self) -> None:
    """Stops reading ahead (and so any worker processes); a later request starts again."""
    self._ahead.close()
    self._eval_ahead.close()

  def __getstate__(self) -> dict:
    """What a data-loading worker process needs: everything but the read-ahead streams."""
    state = dict(self.__dict__)
    state["_ahead"] = state["_eval_ahead"] = None
    state["device_normalizer"] = None  # workers only need to know that they leave images uint8
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    decode.keep_image_blocks()

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.size, self.size, self.channels)

  def train_batch(self, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """This process's share of global training batch `step` (0-based): a pure function of its args."""
    return self._ahead.get((seed, batch_size, sampling.this_shard()), step)

  def eval_batches(self, batch_size: int):
    """The whole evaluation split once, in order; the last batch is padded and masked (mask 0)."""
    return self._eval_ahead.run((batch_size, sampling.this_shard()), 0,
                                sampling.num_eval_batches(batch_size, self.eval_size))

  def records(self, indices, split: str = "train") -> list[dict]:
    """TFDS records (image still encoded) at `indices` of the training or evaluation examples."""
    indices = [int(i) for i in indices]
    if split == "train":
      records = self._train.__getitems__(indices)
    else:
      records = self._eval.__getitems__([i + self._eval_offset for i in indices])
    for i, r in zip(indices, records):
      if not r.get(self.image_key) or r.get(self.label_key) is None:
        # What array_record gives for a record in a truncated or damaged file: every field None.
        raise DataError(f"{self._where(split, i, r)} is empty: its array_record file is truncated or "
                        f"damaged; prepare {self.name} again (resnet-jax prepare).")
    return records

  def _where(self, split: str, index: int, record: dict) -> str:
    """How an error names a record: dataset, split, index and, where stored, its original file."""
    name = record.get("file_name")
    name = f" ({name.decode() if isinstance(name, bytes) else name})" if name else ""
    split = split if split == "train" else self.eval_split
    return f"{self.name} {split} example {index}{name} in {self._data_dir}"

  @contextlib.contextmanager
  def _naming(self, records, indices, split: str):
    """An image of `records` that cannot be decoded becomes a DataError naming its record."""
    try:
      yield
    except decode.UnreadableImageError as e:
      where = self._where(split, int(indices[e.position]), records[e.position])
      raise DataError(f"{where} is not a readable image ({e.cause}); replace it and prepare "
                      f"{self.name} again (resnet-jax prepare).") from e

  def _load_train(self, key, step: int) -> dict[str, np.ndarray]:
    seed, batch_size, shard = key
    idx, params = sampling.batch_plan(seed, step, batch_size, self.train_size, self.augment,
                                      self.color_std, shard)
    records = self.records(idx)
    with self._naming(records, idx, "train"):
      images = self._images(records, params, train=True)
    batch = {"image": images, "label": self._labels(records)}
    if not self._host_normalizes and "alpha" in params:  # the device adds them as it normalises
      batch[on_device.DeviceNormalizer.OFFSET_KEY] = np.asarray(aug.pca_offsets(params["alpha"]),
                                                                np.float32)
    return batch

  def _load_eval(self, key, j: int) -> dict[str, np.ndarray]:
    batch_size, shard = key
    idx, mask = sampling.eval_batch_plan(batch_size, self.eval_size, j, shard)
    records = self.records(idx, "eval")
    with self._naming(records, idx, "eval"):
      images = self._eval_images(records)
    return {"image": images, "label": self._labels(records), "mask": mask}

  def _eval_images(self, records):
    if self.eval_layout.crops == "ten":
      images = self.normalizer(self.ten_crops(records))
    elif self.eval_layout.crops == "multiscale":  # one array per scale: their sizes differ
      images = tuple(self.normalizer.at_size(s)(self.square_crops(records, s))
                     for s in self.eval_layout.scales)
    else:
      images = self._images(records, {}, train=False)
    return images

  def square_crops(self, records, side: int) -> np.ndarray:
    """uint8 (B, side, side, C): each image's shorter side resized to `side`, its central square.

    Multi-scale testing (He et al. 2015, sec. 3.4, Tables 4-5) applies the fully-convolutional net
    at several scales of the shorter side; a batch needs one shape per scale, so each scale sees the
    central square of the image at that scale (75% of a 4:3 photograph) rather than all of it.
    """
    images = decode.load_images([r[self.image_key] for r in records], self.channels)
    heights = np.array([im.height for im in images])
    widths = np.array([im.width for im in images])
    boxes = aug.center_boxes(heights, widths, fraction=1.0)
    return np.stack([decode.crop_resize(im, b, side, self.channels) for im, b in zip(images, boxes)])

  def ten_crops(self, records) -> np.ndarray:
    """uint8 (B, 10, size, size, C): the five `ten_crop_boxes` crops of each image, then their flips."""
    images = decode.load_images([r[self.image_key] for r in records], self.channels)
    heights = np.array([im.height for im in images])
    widths = np.array([im.width for im in images])
    boxes = aug.ten_crop_boxes(heights, widths)
    crops = np.stack([np.stack([decode.crop_resize(im, b, self.size, self.channels) for b in bs])
                      for im, bs in zip(images, boxes)])
    return np.concatenate([crops, crops[:, :, :, ::-1]], axis=1)

  def _labels(self, records) -> np.ndarray:
    return np.asarray([r[self.label_key] for r in records], np.int32)

  def decode(self, records, params: dict, train: bool, normalizer=None) -> np.ndarray:
    """uint8 images (B, size, size, C) of `records`: augmented if `train`, else the eval view.

    With `normalizer`, variable-size images come back normalised (float32, PCA offsets of `params`
    added): the same values as normalising the uint8 images, in one pass (`decode.decode_crops`).
    """
    data = [r[self.image_key] for r in records]
    if self.fixed and not (train and self.augment in ("inception", "scale")):
      images = np.stack([decode.to_array(im, self.channels) for im in decode.load_images(data, self.channels)])
      if normalizer is None:
        return images
      return normalizer(images, aug.pca_offsets(params["alpha"]) if "alpha" in params else None)
    return decode.decode_crops(data, self.augment if train else "none", params, self.size,
                            self.channels, normalizer)

  def _images(self, records, params: dict, train: bool) -> np.ndarray:
    images = self.decode(records, params, train, self.normalizer if self._host_normalizes else None)
    if train and self.augment == "cifar":
      # Normalise first, then zero-pad: the padding is the mean colour, as with the paper's
      # mean-subtracted inputs (sec. 4.2).
      images = aug.pad_crop_flip(images, params["offset"], params["flip"])
    return images

  def train_arrays(self) -> tuple[np.ndarray, np.ndarray]:
    """The whole training split decoded, normalised and un-augmented (for data_on_device).

    Only for fixed-size images (CIFAR: 50k x 32x32x3 float32 = 614 MB; validated); ImageNet does
    not fit.
    """
    parts = list(self._chunks(self.train_size, lambda recs: (
        self.normalizer(self.decode(recs, {}, train=False)), self._labels(recs))))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

  def _chunks(self, count: int, fn):
    """fn(records) for consecutive chunks of the first `count` training examples, read ahead."""
    per = min(500, max(1, _STATS_CHUNK_PIXELS // (self.size * self.size * self.channels)))

    def chunk(_, j):
      indices = range(j * per, min((j + 1) * per, count))
      records = self.records(indices)
      with self._naming(records, indices, "train"):
        return fn(records)

    return ReadAhead(chunk, self._ahead.num_threads, 2).run(None, 0, -(-count // per))

  def _fit_normalizer(self, kind: str, count: int) -> aug.Normalizer:
    """Statistics of the first `count` training images (stored order, TFDS-shuffled) in eval view."""
    total = None
    for part in self._chunks(count, lambda recs: aug.moments(self.decode(recs, {}, train=False))):
      total = part if total is None else tuple(a + b for a, b in zip(total, part))
    return aug.Normalizer.from_sums(kind, *total)
