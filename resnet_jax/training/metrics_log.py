"""Where metrics go: `<workdir>/metrics.jsonl` (one JSON object per step), TensorBoard, the console.

The workdir may be a local path or a bucket URL (gs://...), read and written through etils.epath.
"""

import json
import math
import os
import sys
import time
from typing import Iterable

from etils import epath

from resnet_jax import storage

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
  """Every row of `<workdir>/metrics.jsonl` (empty if the run has not logged yet)."""
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
  """Appends rows to metrics.jsonl and TensorBoard; on resume, drops rows past the restored step.

  Rows after the newest checkpoint were written by a run that then died; the resumed run recomputes
  exactly those steps (resume is exact), so keeping them would only duplicate steps.

  A bucket object cannot be appended to, so on a remote workdir the file is uploaded whole: at most
  every `upload_every_s` seconds (TensorBoard's own cadence), at `flush()`, which the loop calls at
  every checkpoint so that the rows a resume keeps are stored, and at `close()`.
  """

  def __init__(self, workdir: str, start_step: int, tensorboard: bool = True,
               upload_every_s: float = 120.0):
    self.path = epath.Path(workdir) / METRICS_FILE
    self.remote = storage.is_remote(workdir)
    rows = [r for r in read_metrics(workdir) if r["step"] <= start_step]
    lines = [json.dumps(r) + "\n" for r in rows]
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
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)

  def _upload(self) -> None:
    self.path.write_text("".join(self.lines))
    self.uploaded_at = time.monotonic()

  def write(self, rows: Iterable[dict]) -> None:
    for row in rows:
      line = json.dumps(row) + "\n"
      if self.remote:
        self.lines.append(line)
      else:
        self.file.write(line)
      if self.tb is not None:
        for key, value in row.items():
          if key != "step":
            self.tb.add_scalar(key, value, row["step"])
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
    if self.remote:
      self._upload()
    else:
      self.file.close()
    if self.tb is not None:
      self.tb.close()


class ProgressBar:
  """A one-line console progress bar with rate and ETA; plain lines when stderr is not a terminal."""

  def __init__(self, total: int, start: int, stream=None):
    self.total, self.start = total, start
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.t0 = time.perf_counter()
    self.rate_from = None  # (step, time) after the first update: excludes compilation from the rate

  def update(self, step: int, metrics: dict) -> None:
    now = time.perf_counter()
    if self.rate_from is None:
      self.rate_from = (step, now)
      rate = 0.0
    else:
      done, elapsed = step - self.rate_from[0], now - self.rate_from[1]
      rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else math.nan
    frac = step / self.total
    bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
    text = (f"step {step}/{self.total} [{bar}] {100 * frac:5.1f}% {rate:6.2f} step/s "
            f"ETA {_fmt_time(eta)} loss {metrics.get('train/loss', math.nan):.4f} "
            f"acc {metrics.get('train/accuracy', math.nan):.3f}")
    if "eval/accuracy" in metrics:
      text += f" eval_acc {metrics['eval/accuracy']:.3f}"
    end = "\r" if self.tty and step < self.total else "\n"
    self.stream.write(("\r" if self.tty else "") + text + end)
    self.stream.flush()


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "--:--"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
