"""Paths that may be local or in a bucket (gs://...), read and written through `etils.epath`.

Training, sweeps and reports all go through here, so a workdir works the same on a local disk and
in a bucket.
"""

import os

from etils import epath


def is_remote(path) -> bool:
  """Whether `path` is an object-store URL (gs://...): no appends, no locks, no rename-over."""
  return "://" in str(path)


def absolute(path) -> str:
  """`path` made absolute; a bucket URL already is (Orbax needs absolute paths)."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def write_atomic(path, text: str) -> None:
  """Replaces the file at `path` with `text` so that a reader sees the old or the new file whole.

  Locally through a temporary file and a rename; a bucket object is replaced whole by its upload.
  """
  path = epath.Path(path)
  if is_remote(path):
    path.write_text(text)
    return
  tmp = path.parent / f".{path.name}.tmp.{os.getpid()}"
  tmp.write_text(text)
  os.replace(tmp, path)
