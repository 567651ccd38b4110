"""Paths that may be local or in a bucket (gs://...), read and written through `etils.epath`.

Training, sweeps and reports all go through here, so a workdir works the same on a local disk and
in a bucket.

A bucket is a network service: requests time out, connections reset, and GCS answers 429 or 5xx
when it is busy (its guidance: retry those with truncated exponential backoff,
cloud.google.com/storage/docs/retry-strategy). Three layers retry, each its own requests:

- gcsfs, which epath uses for gs:// (`use_gcsfs`), retries each HTTP request 6 times on 408, 429,
  5xx, connection errors and timeouts, sleeping 1, 2, 4, 8 and 16 s (gcsfs/retry.py);
- tensorstore, which writes and reads Orbax's arrays, retries each request up to 32 times, 1 s to
  32 s apart (its `gcs_request_retries` context resource, defaults kept);
- `retrying` here wraps each of our own writes and reads whole (metrics, config, status files,
  summaries), for when a fault outlasts gcsfs's own ~30 s: backoff from 1 s to 32 s for up to
  `RETRY_BUDGET_S`, after which the run ends with `StorageUnavailableError` (exit 75: re-run the
  same command), having moved and deleted nothing.
"""

import errno
import importlib.metadata
import importlib.util
import os
import random
import sys
import time

from etils import epath

from resnet_jax.run.errors import StorageUnavailableError

# google-cloud-storage's default retry deadline (google/cloud/storage/retry.py: DEFAULT_RETRY,
# 120 s); a longer outage ends the run with exit 75 for whatever restarts it to retry later.
RETRY_BUDGET_S = 120.0
RETRY_MAX_DELAY_S = 32.0  # GCS's retry strategy: truncated exponential backoff, 32 s at most
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# How tensorstore's errors (hence Orbax's) name a transient failure: absl status codes, as text.
_TRANSIENT_CODES = ("UNAVAILABLE:", "DEADLINE_EXCEEDED:", "RESOURCE_EXHAUSTED:", "ABORTED:")
_EPATH_USE_TF = "EPATH_USE_TF"
_JITTER = random.Random()  # its own: a retry must not move any other user of `random`


def is_remote(path) -> bool:
  """Whether `path` is an object-store URL (gs://...): no appends, no locks, no rename-over."""
  return "://" in str(path)


def absolute(path) -> str:
  """`path` made absolute; a bucket URL already is (Orbax needs absolute paths)."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def use_gcsfs() -> None:
  """Makes etils.epath read and write gs:// through gcsfs, also where TensorFlow is installed.

  epath otherwise picks TensorFlow's gfile whenever TensorFlow is importable (etils/epath/gpath.py),
  a second GCS client that ignores STORAGE_EMULATOR_HOST, so none of the tests with a GCS emulator
  would cover it, and whose retries are not those described above. Call before any gs:// path is
  touched (epath caches its choice per process); an EPATH_USE_TF set by the user is kept.
  """
  os.environ.setdefault(_EPATH_USE_TF, "false")


def backend(path) -> str:
  """Which client reads and writes `path`, in words (a run says it when its workdir is a bucket)."""
  if not is_remote(path):
    return "the local file system"
  tf_allowed = os.environ.get(_EPATH_USE_TF, "").lower() not in ("false", "no", "f", "0")
  if tf_allowed and importlib.util.find_spec("tensorflow") is not None:
    return f"TensorFlow's gfile ({_EPATH_USE_TF}={os.environ.get(_EPATH_USE_TF, '')!r})"
  try:
    return f"gcsfs {importlib.metadata.version('gcsfs')}"
  except importlib.metadata.PackageNotFoundError:
    return "gcsfs (not installed: pip install gcsfs)"


def is_transient(error: BaseException) -> bool:
  """Whether `error`, or an error it was raised from, is one that a retry may cure.

  Timeouts, refused or reset connections, HTTP 408/429/5xx (gcsfs's HttpError, or anything with
  such a status), what gcsfs itself deems retriable, tensorstore's UNAVAILABLE, DEADLINE_EXCEEDED,
  RESOURCE_EXHAUSTED (its 429) and ABORTED, and a lost resumable upload session. A full or read-only disk, a missing
  object or a permission error is not.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, (TimeoutError, ConnectionError)):
      return True
    status = getattr(error, "code", None) or getattr(error, "status", None)
    if isinstance(status, int) and status in _TRANSIENT_STATUS:
      return True
    if "gcsfs.retry" in sys.modules and sys.modules["gcsfs.retry"].is_retriable(error):
      return True
    if isinstance(error, ValueError) and str(error).startswith(_TRANSIENT_CODES):
      return True
    if isinstance(error, FileNotFoundError) and "upload_id=" in str(error):
      # A resumable upload session that the server no longer knows (gcsfs names its URL): GCS's
      # remedy is a new upload (cloud.google.com/storage/docs/resumable-uploads, "404 Not Found"),
      # which repeating the whole write is.
      return True
    error = error.__cause__ or error.__context__
  return False


def retrying(what: str, fn, *args, budget_s: float | None = None, sleep=time.sleep,
             clock=time.monotonic, **kwargs):
  """`fn(*args, **kwargs)`, tried again after transient errors with exponential backoff.

  Waits 1, 2, 4, ... up to RETRY_MAX_DELAY_S seconds (with jitter, so that the processes of a
  slice do not retry in step) for up to `budget_s` (RETRY_BUDGET_S) seconds in all, then raises
  StorageUnavailableError naming `what`. Any other error is raised at once, unchanged. `fn` must be
  safe to repeat: every caller replaces a whole object or reads one.
  """
  budget_s = RETRY_BUDGET_S if budget_s is None else budget_s
  start, delay, tries = clock(), 1.0, 0
  while True:
    try:
      return fn(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except  # sorted by is_transient
      if not is_transient(e):
        raise
      tries += 1
      elapsed = clock() - start
      if elapsed + delay > budget_s:
        raise StorageUnavailableError(
            f"{what} failed {tries} times over {elapsed:.0f} s with transient errors (the last: "
            f"{type(e).__name__}: {e}), so the run stopped with nothing moved or deleted: re-run "
            "the same command to resume from the last checkpoint once the storage answers."
        ) from e
      print(f"resnet-jax: {what}: {type(e).__name__}: {e}; retrying in {delay:.0f} s",
            file=sys.stderr, flush=True)
      sleep(delay * _JITTER.uniform(1.0, 1.5))
      delay = min(2 * delay, RETRY_MAX_DELAY_S)


def read_text(path) -> str:
  """The text of the file at `path`, read again after transient errors."""
  return retrying(f"reading {path}", epath.Path(path).read_text)


def exists(path) -> bool:
  return retrying(f"looking for {path}", epath.Path(path).exists)


def write_atomic(path, text: str) -> None:
  """Replaces the file at `path` with `text` so that a reader sees the old or the new file whole.

  Locally through a temporary file and a rename; a bucket object is replaced whole by its upload,
  tried again after transient errors (`retrying`).
  """
  path = epath.Path(path)
  if is_remote(path):
    retrying(f"writing {path}", path.write_text, text)
    return
  tmp = path.parent / f".{path.name}.tmp.{os.getpid()}"
  tmp.write_text(text)
  os.replace(tmp, path)


def write_bytes(path, data: bytes) -> None:
  """Replaces the object or file at `path` with `data` (a bucket: retried like `write_atomic`)."""
  path = epath.Path(path)
  retrying(f"writing {path}", path.write_bytes, data)


# Why the storage refused a write, by errno: each is a wall the run can resume from once removed.
REFUSALS = {errno.ENOSPC: "is full", errno.EDQUOT: "is over its quota",
            errno.EFBIG: "refused a file over the file-size limit (ulimit -f)"}


def refusal(error: BaseException) -> str | None:
  """How the storage refused a write, if `error` (or anything in its chain) is such a refusal:
  no space left, a quota, a file-size limit. None for anything else."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in REFUSALS:
      return REFUSALS[error.errno]
    text = str(error)  # Orbax and TensorStore re-raise these as text
    for code, words in REFUSALS.items():
      if os.strerror(code) in text:
        return words
    error = error.__cause__ or error.__context__
  return None
