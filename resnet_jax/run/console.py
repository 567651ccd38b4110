"""What a run tells the person watching it: one line per phase, and a progress bar from step 1.

Everything goes to stderr (stdout carries the final JSON result), from process 0 only. On a terminal
the bar is redrawn in place a few times a second; in a log file (not a terminal) it becomes a plain
line every `interval_s` seconds and at every metrics row, so logs stay short.
"""

import math
import sys
import time

PREFIX = "resnet-jax: "


class Console:
  """`say(text)`: one line on stderr, prefixed, from the process that reports (or nowhere)."""

  def __init__(self, enabled: bool = True, stream=None):
    self.enabled, self.stream = enabled, stream

  def say(self, text: str) -> None:
    if self.enabled:
      stream = self.stream or sys.stderr
      stream.write(PREFIX + text + "\n")
      stream.flush()


class ProgressBar:
  """A one-line progress bar: step, rate and ETA as soon as two steps are timed, last metrics.

  `update(step)` is called for every finished step (host-side counts: no device sync), so the rate
  does not depend on how often metrics are fetched; `update(step, row)` also shows the row's loss,
  accuracy and test accuracy. The rate starts at the first finished step, so compilation is left out.
  """

  def __init__(self, total: int, start: int, stream=None, interval_s: float | None = None):
    self.total, self.start = total, start
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.interval_s = interval_s if interval_s is not None else (0.25 if self.tty else 30.0)
    self.rate_from = None  # (step, time) of the first finished step
    self.metrics = {}
    self._last_print = -math.inf
    self._step = start

  def rate(self, now: float) -> float:
    """Steps per second since the first finished step; 0 until two steps are timed."""
    if self.rate_from is None or self._step <= self.rate_from[0] or now <= self.rate_from[1]:
      return 0.0
    return (self._step - self.rate_from[0]) / (now - self.rate_from[1])

  def update(self, step: int, metrics: dict | None = None, force: bool = False) -> None:
    now = time.perf_counter()
    self._step = max(self._step, step)
    if self.rate_from is None:
      self.rate_from = (step, now)
      force = True  # the first step after compilation is worth a line
    if metrics:
      self.metrics = metrics
    if force or now - self._last_print >= self.interval_s or self._step == self.total:
      self._print(self.line(now))

  def note(self, text: str) -> None:
    """A transient phase (evaluating, ...) shown after the bar."""
    self._print(self.line(time.perf_counter()) + f" | {text}")

  def line(self, now: float) -> str:
    rate = self.rate(now)
    eta = (self.total - self._step) / rate if rate > 0 else math.nan
    frac = self._step / self.total
    bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
    text = f"step {self._step}/{self.total} [{bar}] {100 * frac:5.1f}%"
    text += f" {rate:6.2f} step/s ETA {_fmt_time(eta)}" if rate > 0 else " timing..."
    if "train/loss" in self.metrics:
      text += (f" loss {self.metrics['train/loss']:.4f}"
               f" acc {self.metrics.get('train/accuracy', math.nan):.3f}")
    if "eval/accuracy" in self.metrics:
      text += f" eval_acc {self.metrics['eval/accuracy']:.3f}"
    return text

  def _print(self, text: str) -> None:
    self._last_print = time.perf_counter()
    end = "\r" if self.tty and self._step < self.total else "\n"
    self.stream.write(("\r\033[K" if self.tty else "") + text + end)
    self.stream.flush()


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "--:--"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
