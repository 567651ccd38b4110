"""Paths that may be local or in a bucket (gs://...), read and written through `etils.epath`.

Training, sweeps and reports all go through here, so a workdir works the same on a local disk and
in a bucket.
"""

import errno
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


# HTTP statuses a storage service uses for "try again" (GCS: 408, 429 and 5xx; its retry guidance).
TRANSIENT_HTTP = (408, 429, 500, 502, 503, 504)
# How gRPC-style errors (tensorstore's, hence Orbax's) name transient failures in their text.
TRANSIENT_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED")
TRANSIENT_ERRNO = {errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED,
                   errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EPIPE}


def is_transient(error: BaseException) -> bool:
  """Whether `error` (or anything in its chain) is a storage failure worth retrying: a timeout, a
  refused or reset connection, or a 408/429/5xx answer. A missing file, a full disk or a bug is not."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, (TimeoutError, ConnectionError)):
      return True
    if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNO:
      return True
    status = getattr(error, "code", None) or getattr(error, "status", None)
    if isinstance(status, int) and status in TRANSIENT_HTTP:
      return True
    text = str(error)
    if any(f"{code}:" in text for code in TRANSIENT_CODES) or any(
        f"HTTP response code: {s}" in text or f"status {s}" in text for s in TRANSIENT_HTTP):
      return True
    error = error.__cause__ or error.__context__
  return False
