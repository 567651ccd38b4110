"""Finding a TFDS dataset: its builder, prepared in array_record format, downloaded when it can be.

`open_builder` gives clear errors for the cases a user can fix (an unknown name, a dataset neither
prepared nor downloadable, the wrong file format), probes the network before TFDS would retry a
download for minutes, leaves no empty folders behind a failed download, and mirrors a bucket's
dataset to local disk (array_record reads only local files). `tfds_source` reads what it opens.
"""

import contextlib
import os
import socket

from resnet_jax.run import process, storage
from resnet_jax.run.errors import ConfigError, DataError


class DataUnavailableError(DataError):
  """The dataset is neither prepared in data_dir nor could be downloaded and prepared."""


def tfds_module():
  """tensorflow_datasets, imported when first needed (it is slow to import)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds


@contextlib.contextmanager
def quiet_absl():
  """absl's warnings off while TFDS looks for a dataset: for a folder that does not hold it, TFDS
  logs "Variant folder ... has no dataset_info.json" before our own, clearer error."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(verbosity)


def base_name(name: str) -> str:
  """`cifar10` of `cifar10/config:3.0.2`."""
  return name.split("/")[0].split(":")[0]


def local_copy(builder, cache_dir: str):
  """Copies a prepared dataset from remote storage (gs://) to `cache_dir` once; returns its builder.

  array_record reads only local (POSIX) files: random access on GCS is not implemented
  (google/array_record#120), so a gs:// data_dir is mirrored, file by file, skipping files already
  copied with the same size. For datasets larger than the local disk, mount the bucket with gcsfuse
  and pass the mount point as data_dir instead.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top

  src = epath.Path(builder.data_dir)
  root = cache_dir or os.path.join(process.cache_root(), "tfds")
  config = f"/{builder.builder_config.name}" if builder.builder_config else ""
  dst = epath.Path(root) / f"{builder.name}{config}" / str(builder.version)  # TFDS's own layout
  dst.mkdir(parents=True, exist_ok=True)
  for f in storage.retrying(f"listing {src}", lambda: list(src.iterdir())):
    target = dst / f.name
    if not (target.exists() and target.stat().length == storage.retrying(
        f"reading the size of {f}", f.stat).length):
      storage.retrying(f"copying {f}", f.copy, target, overwrite=True)  # whole file: safe to repeat
  return tfds_module().builder(f"{builder.name}{config}:{builder.version}", data_dir=root,
                         file_format="array_record")


def open_builder(name: str, data_dir: str = "", cache_dir: str = "", download: bool = True):
  """The TFDS builder of `name`, prepared in array_record format (downloading it if needed)."""
  import jax  # pylint: disable=g-import-not-at-top

  tfds = tfds_module()
  try:
    with quiet_absl():
      builder = tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
      prepared = builder.is_prepared()
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ConfigError(f"dataset={name!r} is not 'digits', 'synthetic' or a TFDS dataset name "
                     f"(e.g. cifar10, cifar100, imagenet2012). TFDS said: {e}") from None
  where = data_dir or "the TFDS default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
  if not prepared:
    if not download or jax.process_count() > 1:
      raise DataUnavailableError(
          f"{name} is not prepared in {where}. Prepare it before the run (one process): "
          f"`resnet-jax prepare {base_name(name)} --source DIR --data-dir DATA_DIR` offline, or "
          f"python -c \"import tensorflow_datasets as tfds; tfds.data_source('{name}', "
          f"data_dir='DATA_DIR')\" with network.")
    offline = _offline()
    if offline:
      # TFDS would retry its downloads for minutes before giving up.
      raise DataUnavailableError(
          f"{name} is not prepared in {where}, and it cannot be downloaded: {offline}. Prepare it "
          f"offline from the original files: resnet-jax prepare {base_name(name)} --source DIR "
          "--data-dir DATA_DIR, then pass --config.data_dir=DATA_DIR (see README, Data).")
    root = data_dir or str(builder.data_dir_root)
    before = _existing_dirs(root)
    try:
      builder.download_and_prepare()
    except Exception as e:  # network, manual-download, TensorFlow-missing errors: all need a fix
      _remove_new_empty_dirs(root, before)  # a failed download leaves no empty folders behind
      raise DataUnavailableError(
          f"could not download and prepare {name} in {where} ({type(e).__name__}: {e}). Offline, "
          f"prepare it from the original files: resnet-jax prepare {base_name(name)} --source DIR "
          f"--data-dir DATA_DIR (see README, Data).") from e
  if "array_record" not in [f.value for f in builder.info.available_file_formats()]:
    raise DataError(f"{name} in {builder.data_dir} is prepared as {builder.info.file_format.value}, "
                     "but random access needs array_record. Prepare it into another data_dir.")
  if storage.is_remote(str(builder.data_dir)):
    builder = local_copy(builder, cache_dir)
  return builder


def _existing_dirs(root: str) -> set[str]:
  """Every folder under `root`, and `root`'s existing ancestors (absolute paths)."""
  if storage.is_remote(root):
    return set()
  root = os.path.abspath(root)
  found = {os.path.abspath(d) for d, _, _ in os.walk(root)}
  path = root
  while True:
    if os.path.isdir(path):
      found.add(path)
    parent = os.path.dirname(path)
    if parent == path:
      return found
    path = parent


def _remove_new_empty_dirs(root: str, before: set[str]) -> None:
  """Removes the empty folders under (and up to) `root` that were not there `before`."""
  if storage.is_remote(root) or not os.path.isdir(root):
    return
  for dirpath, _, _ in sorted(os.walk(os.path.abspath(root)), key=lambda w: -len(w[0])):  # deepest first
    if dirpath not in before:
      try:
        os.rmdir(dirpath)  # only succeeds on an empty folder
      except OSError:
        pass
  path = os.path.abspath(root)
  while path not in before and os.path.isdir(path) and not os.listdir(path):
    os.rmdir(path)
    path = os.path.dirname(path)


# Where TFDS downloads from first (its GCS mirror of prepared datasets), probed before a download.
_PROBE = ("storage.googleapis.com", 443)
_PROBE_TIMEOUT_S = 5.0


def _offline() -> str:
  """Why nothing can be downloaded here ("" if the network answers), decided in seconds.

  Behind an HTTP(S) proxy a direct connection may fail while downloads work, so there we trust the
  proxy and let TFDS try.
  """
  if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
    return ""
  try:
    socket.create_connection(_PROBE, timeout=_PROBE_TIMEOUT_S).close()
  except OSError as e:
    return f"no network ({_PROBE[0]} did not answer within {_PROBE_TIMEOUT_S:.0f} s: {e})"
  return ""
