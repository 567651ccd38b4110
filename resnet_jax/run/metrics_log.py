"""Where metrics go: `<workdir>/metrics.jsonl` (one JSON object per step) and TensorBoard.

The workdir may be a local path or a bucket URL (gs://...), read and written through etils.epath.
"""

import json
import os
import time
import warnings
from typing import Iterable

from etils import epath

from resnet_jax.run import storage
from resnet_jax.run.tensorboard import EventWriter
from resnet_jax.run.workdir import METRICS_FILE, SUPERSEDED_FILE, TENSORBOARD_DIR, TORN_FILE


def _parse(text: str) -> tuple[list[dict], list[str]]:
  """(rows, torn lines) of a metrics.jsonl's text.

  A line cut short (kill -9 or a full disk in the middle of a write) is not valid JSON, or is the last
  line without its newline: it is not a row.
  """
  rows, torn = [], []
  lines = text.split("\n")
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      if i == len(lines) - 1 or not isinstance(row, dict) or "step" not in row:
        raise ValueError("not a whole row")
      rows.append(row)
    except ValueError:  # json.JSONDecodeError too
      torn.append(line)
  return rows, torn


def read_metrics(workdir: str) -> list[dict]:
  """Every whole row of `<workdir>/metrics.jsonl` (empty if the run has not logged yet).

  A torn line (cut short by a crash) is skipped here; the next run of the workdir sets it aside.
  """
  path = epath.Path(workdir) / METRICS_FILE
  if not storage.exists(path):
    return []
  return _parse(storage.read_text(path))[0]


class MetricsLog:
  """Appends rows to metrics.jsonl and TensorBoard; on resume, drops rows past the restored step.

  Rows after the newest checkpoint were written by a run that then died; the resumed run recomputes
  exactly those steps (resume is exact), so keeping them in the log would only duplicate steps: they
  are appended to metrics.jsonl.superseded instead (never lost), as a torn line is to
  metrics.jsonl.torn, each with a warning.

  A bucket object cannot be appended to, so on a remote workdir the file is uploaded whole: at most
  every `upload_every_s` seconds (TensorBoard's own cadence), at `flush()`, which the loop calls at
  every checkpoint so that the rows a resume keeps are stored, and at `close()`.
  """

  def __init__(self, workdir: str, start_step: int, tensorboard: bool = True,
               upload_every_s: float = 120.0):
    self.path = epath.Path(workdir) / METRICS_FILE
    self.remote = storage.is_remote(workdir)
    # A read that fails is retried, never taken for an empty log: the upload below would erase it.
    rows, torn = _parse(storage.read_text(self.path)) if storage.exists(self.path) else ([], [])
    superseded = [json.dumps(r) for r in rows if r["step"] > start_step]
    for lines, name, what in ((torn, TORN_FILE, "torn line(s) (a crash in the middle of a write)"),
                              (superseded, SUPERSEDED_FILE,
                               f"row(s) past step {start_step}, which this run resumes from and "
                               "recomputes")):
      if lines:
        aside = epath.Path(workdir) / name
        previous = storage.read_text(aside) if storage.exists(aside) else ""
        storage.write_atomic(aside, previous + "".join(line + "\n" for line in lines))
        warnings.warn(f"{self.path} had {len(lines)} {what}; kept them in {aside} and dropped them "
                      "from the log.", stacklevel=2)
    lines = [json.dumps(r) + "\n" for r in rows if r["step"] <= start_step]
    if self.remote:
      self.file, self.lines, self.upload_every_s = None, lines, upload_every_s
      self._upload()  # one object replaces another whole: the old file stays whole if we die here
    else:
      tmp = str(self.path) + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(lines)
      os.replace(tmp, self.path)  # atomic: the old file stays whole if we die here
      self.file = open(self.path, "a")
    self.tb = None
    if tensorboard:
      self.tb = EventWriter(os.path.join(workdir, TENSORBOARD_DIR), purge_step=start_step + 1)

  def _upload(self) -> None:
    storage.write_atomic(self.path, "".join(self.lines))
    self.uploaded_at = time.monotonic()

  def write(self, rows: Iterable[dict]) -> None:
    for row in rows:
      line = json.dumps(row) + "\n"
      if self.remote:
        self.lines.append(line)
      else:
        self.file.write(line)
      if self.tb is not None:
        self.tb.write(row["step"], {k: v for k, v in row.items() if k != "step"})
    if not self.remote:
      self.flush()
    elif time.monotonic() - self.uploaded_at >= self.upload_every_s:
      self._upload()

  def flush(self) -> None:
    """Makes every row written so far durable (on a remote workdir: one upload of the file)."""
    if self.remote:
      self._upload()
    else:
      self.file.flush()
    if self.tb is not None:
      self.tb.flush()

  def close(self) -> None:
    """Closes both writers, even if the first fails (a full disk); then raises the first error."""
    errors = []
    for close in (self._upload if self.remote else self.file.close,
                  self.tb.close if self.tb is not None else None):
      try:
        if close is not None:
          close()
      except OSError as e:
        errors.append(e)
    if errors:
      raise errors[0]
