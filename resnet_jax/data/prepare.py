"""Offline preparation: TFDS datasets built from the original files, with no network.

`prepare("cifar10", source, data_dir)` runs TFDS's own `cifar10` builder (its `_split_generators` and
`_generate_examples`, the same code an online download runs) on the official binary files found in
`source`, so `tfds.data_source("cifar10", data_dir=data_dir)` afterwards sees the same splits,
examples, labels and order as after an online download. Likewise `cifar100`. `imagenet2012` (and any
other TFDS dataset with a manual download) goes through TFDS's own `manual_dir` path.
"""

import contextlib
import gzip
import io
import os
import tarfile
import tempfile

import numpy as np

from resnet_jax.run.errors import ConfigError, DataError

# name -> (official archive, folder inside it, {binary file: records in the official release},
#          label-name files, bytes of labels per record, classes per label file).
# A record is its label bytes, then 3072 pixel bytes (1024 R, 1024 G, 1024 B).
CIFAR = {
    "cifar10": ("cifar-10-binary.tar.gz", "cifar-10-batches-bin",
                {**{f"data_batch_{i}.bin": 10000 for i in range(1, 6)}, "test_batch.bin": 10000},
                ["batches.meta.txt"], 1, [10]),
    "cifar100": ("cifar-100-binary.tar.gz", "cifar-100-binary", {"train.bin": 50000, "test.bin": 10000},
                 ["coarse_label_names.txt", "fine_label_names.txt"], 2, [20, 100]),
}
IMAGENET_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


class SourceError(DataError):
  """The source directory lacks a file, or a file is corrupt; the message names it."""


def _open_member(source: str, name: str, archive):
  """Bytes of `name` from `source`: plain, gzipped (.gz), or inside the official archive."""
  for path in (os.path.join(source, name), os.path.join(source, name + ".gz")):
    if os.path.isfile(path):
      try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
          return f.read()
      except (OSError, EOFError) as e:
        raise SourceError(f"{path} is corrupt (cannot read it: {e}); replace it with the original.")
  if archive is not None:
    folder, tar = archive
    try:
      member = tar.extractfile(f"{folder}/{name}")
      return member.read()
    except KeyError:
      pass
    except (OSError, EOFError, tarfile.TarError) as e:
      raise SourceError(f"{tar.name}: {folder}/{name} is corrupt ({e}).")
  where = f"{source} (as {name} or {name}.gz" + (f", or inside {archive[1].name})" if archive else ")")
  raise SourceError(f"missing {name}: not found in {where}.")


def _find_archive(source: str, archive_name: str, folder: str):
  """(folder, open tarfile) when `source` is, or holds, the official archive; else None."""
  path = source if os.path.isfile(source) else os.path.join(source, archive_name)
  if not os.path.isfile(path):
    return None
  try:
    return folder, tarfile.open(path, "r:*")
  except (tarfile.TarError, OSError, EOFError) as e:
    raise SourceError(f"{path} is corrupt (not a readable tar archive: {e}).") from None


def stage_cifar(name: str, source: str, staging: str) -> str:
  """Checks and writes the uncompressed CIFAR files into `staging/<folder>`; returns `staging`.

  Every binary file must hold exactly the official number of records, and every label byte must be
  a valid class, so a truncated or foreign file is reported by name before anything is built.
  """
  archive_name, folder, binaries, label_files, label_bytes, classes = CIFAR[name]
  if not os.path.exists(source):
    raise SourceError(f"--source {source} does not exist; point it at the folder with the "
                      f"{name} binary files or at {archive_name}.")
  archive = _find_archive(source, archive_name, folder)
  out = os.path.join(staging, folder)
  os.makedirs(out, exist_ok=True)
  record = label_bytes + 3072
  with contextlib.closing(archive[1]) if archive else contextlib.nullcontext():
    for fname, expected in binaries.items():
      data = _open_member(source, fname, archive)
      if len(data) != expected * record:
        raise SourceError(f"{fname} is corrupt or incomplete: {len(data):,} bytes, expected "
                          f"{expected:,} records of {record} bytes = {expected * record:,}.")
      labels = np.frombuffer(data, np.uint8).reshape(expected, record)[:, :label_bytes]
      for k, n in enumerate(classes):
        if labels[:, k].max() >= n:
          raise SourceError(f"{fname} is corrupt: a label byte is {labels[:, k].max()}, but "
                            f"{name} has {n} classes.")
      with open(os.path.join(out, fname), "wb") as f:
        f.write(data)
    for fname, n in zip(label_files, classes):
      names = [s for s in _open_member(source, fname, archive).decode().split("\n") if s.strip()]
      if len(names) != n:
        raise SourceError(f"{fname} is corrupt: {len(names)} class names, expected {n}.")
      with open(os.path.join(out, fname), "w") as f:
        f.write("\n".join(s.strip() for s in names) + "\n")
  return staging


class _StagedFiles:
  """Stands in for TFDS's download manager: the 'download' of the official URL is the staged folder."""

  def __init__(self, root: str, url: str):
    self.root, self.url = root, url

  def download_and_extract(self, url):
    if url != self.url:
      raise RuntimeError(f"unexpected download {url!r} (expected {self.url}); TFDS's builder changed.")
    return self.root


def _offline_builder(name: str):
  """TFDS's registered builder class of `name`, fed from staged files instead of the network."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  base = tfds.builder_cls(name)

  class Offline(base, skip_registration=True):
    """Same name, version, features and example generator as `base`; only the download differs."""

    def __init__(self, *, staged: str, **kwargs):
      self._staged = staged
      super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
      del dl_manager  # no network: the official archive's contents are already staged
      return super()._split_generators(_StagedFiles(self._staged, self._cifar_info.url))

  Offline.name = base.name
  # TFDS finds a builder's code, and records it in dataset_info.json, by the class's module: point it at
  # the original builder's, so the prepared files say what an online build says.
  Offline.__module__ = base.__module__
  return Offline


def check_imagenet(source: str) -> None:
  """The official ILSVRC2012 tar files are in `source` and readable (not their full contents)."""
  for fname in IMAGENET_FILES:
    path = os.path.join(source, fname)
    if not os.path.isfile(path):
      raise SourceError(f"missing {fname} in {source}: download it from image-net.org (the "
                        "ILSVRC2012 training and validation images) and put it there.")
    try:
      with tarfile.open(path, "r:") as tar:
        first = tar.next()
    except (tarfile.TarError, OSError, EOFError) as e:
      raise SourceError(f"{path} is corrupt (not a readable tar archive: {e}).") from None
    if first is None:
      raise SourceError(f"{path} is corrupt: the archive is empty.")


@contextlib.contextmanager
def quiet_tensorflow():
  """TensorFlow's and TFDS's start-up logging, warnings and progress bars off, while preparing.

  The variables must be set before TensorFlow loads (TFDS loads it while building, in this
  process and its workers), so this runs before TFDS is imported. TFDS also prints "Downloading and
  preparing dataset ..." to stdout even when nothing is downloaded; stdout is kept for our own result.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  # Its "oneDNN custom operations are on" notice ignores the level; building a dataset only encodes
  # images, where oneDNN's float kernels change nothing.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  tfds.disable_progress_bar()
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield tfds
  finally:
    absl_logging.set_verbosity(verbosity)
    tfds.enable_progress_bar()


def prepare(name: str, source: str, data_dir: str, log=None) -> dict:
  """Builds TFDS dataset `name` into `data_dir` (array_record) from `source`; returns split sizes.

  `log(text)` hears one line per phase (checking the files, building, done). A preparation that
  fails (a missing or corrupt file, an interrupted build) leaves nothing behind: every folder it
  made under `data_dir`, `data_dir` itself included, is removed again.
  """
  log = log or (lambda text: None)
  made = _NewPaths(data_dir, name)
  try:
    return _prepare(name, source, data_dir, log)
  except BaseException:
    made.remove()
    raise


def _prepare(name: str, source: str, data_dir: str, log) -> dict:
  with quiet_tensorflow() as tfds:
    try:
      tfds.builder_cls(name)
    except tfds.core.registered.DatasetNotFoundError:
      raise ConfigError(f"{name!r} is not a TFDS dataset name (e.g. cifar10, cifar100, "
                        "imagenet2012).") from None
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
      log(f"{name} is already prepared in {builder.data_dir}; nothing to do.")
      return {split: info.num_examples for split, info in builder.info.splits.items()}
    with tempfile.TemporaryDirectory(prefix="resnet_jax_prepare_") as tmp:
      config = None
      if name in CIFAR:
        log(f"checking the {name} files in {source}")
        staged = stage_cifar(name, source, os.path.join(tmp, "staged"))
        builder = _offline_builder(name)(staged=staged, data_dir=data_dir,
                                         file_format="array_record")
      else:
        if not os.path.isdir(source):
          raise SourceError(f"--source {source} is not a directory: give the folder that holds the "
                            f"files of {name}'s manual download.")
        if name == "imagenet2012":
          log(f"checking the ILSVRC2012 archives in {source}")
          check_imagenet(source)
        config = tfds.download.DownloadConfig(manual_dir=source)
      log(f"building {name} into {data_dir} with TFDS's own {name} builder, from the local files "
          "(nothing is downloaded)")
      builder.download_and_prepare(download_dir=os.path.join(tmp, "downloads"),
                                   download_config=config)
    splits = {split: info.num_examples for split, info in builder.info.splits.items()}
  log(f"{name} is ready in {builder.data_dir}: " + ", ".join(f"{k} {v:,}" for k, v in splits.items()))
  return splits


class _NewPaths:
  """What a preparation may create: `data_dir` (and missing ancestors), entries in it, and entries in
  its `<name>` folder (TFDS's `<version>.incomplete*` build folders). Remembers what existed."""

  def __init__(self, data_dir: str, name: str):
    self.data_dir = os.path.abspath(data_dir)
    self.dataset_dir = os.path.join(self.data_dir, name.split("/")[0].split(":")[0])
    self.before = self._present()

  def _present(self) -> set[str]:
    found, path = set(), self.data_dir
    while path != os.path.dirname(path):  # data_dir and every ancestor that exists
      if os.path.exists(path):
        found.add(path)
      path = os.path.dirname(path)
    for folder in (self.data_dir, self.dataset_dir):
      if os.path.isdir(folder):
        found.update(os.path.join(folder, n) for n in os.listdir(folder))
    return found

  def remove(self) -> None:
    import shutil  # pylint: disable=g-import-not-at-top

    for path in sorted(self._present() - self.before, key=len, reverse=True):  # deepest first
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        with contextlib.suppress(OSError):
          os.remove(path)
