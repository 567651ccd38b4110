"""Paths that may be local or in a bucket (gs://...), read and written through `etils.epath`.

Training, sweeps and reports all go through here, so a workdir works the same on a local disk and
in a bucket.
"""

import os


def is_remote(path) -> bool:
  """Whether `path` is an object-store URL (gs://...): no appends, no locks, no rename-over."""
  return "://" in str(path)


def absolute(path) -> str:
  """`path` made absolute; a bucket URL already is (Orbax needs absolute paths)."""
  return str(path) if is_remote(path) else os.path.abspath(path)
