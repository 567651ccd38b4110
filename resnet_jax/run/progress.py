"""The training loop's progress bar: step, rate, ETA and the last metrics on one line, and what the
loop's thread is doing when the bar stalls (`doing`). It writes through `console`'s lock and fits
lines with its helpers, so bar, phases and messages never interleave.
"""

import collections
import contextlib
import math
import os
import sys
import threading
import time

from resnet_jax.run import console


class ProgressBar:
  """A one-line progress bar: step, rate and ETA as soon as two steps are timed, last metrics.

  `update(step)` is called for every finished step (host-side counts: no device sync), so the rate
  does not depend on how often metrics are fetched; `update(step, row)` also shows the row's loss,
  accuracy and test accuracy. `track(step, array)` hands over a dispatched step's output instead:
  the bar counts the step when the array is ready, also while the loop's thread is blocked (a
  metrics fetch waits for every step dispatched before it: tens of seconds for a vectorised group).
  The rate starts at the first finished step, so compilation is left out.

  On a terminal the bar is one line redrawn in place, fitted to the terminal's width, every second
  between updates, with the phase under way (`phase(text)`) or, when no step has finished for
  `console.QUIET_PHASE_S` and no phase is named, what the thread that made the bar is doing
  (`doing`); use it as a context manager so that the redrawing stops with it, leaving the last bar
  on screen.
  """

  def __init__(self, total: int, start: int, stream=None, interval_s: float | None = None,
               redraw_s: float = console.REDRAW_S):
    self.total, self.start = total, start
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.interval_s = (interval_s if interval_s is not None
                       else (0.25 if self.tty else console.LOG_INTERVAL_S))
    self.redraw_s = redraw_s
    self.rate_from = None  # (step, time) of the first finished step
    self.metrics = {}
    self._phase = None  # (text, start time) of the phase under way
    self._last_print = -math.inf
    self._step = start
    self._moved = time.perf_counter()  # when the step count last moved: a stall is timed from it
    self._thread = threading.get_ident()  # the loop's thread: a stall is named from its stack
    self._lock = console.WRITE_LOCK
    self._ticker = None
    self._inflight = collections.deque()  # (step, output array): dispatched, not yet seen done
    self._state = threading.RLock()  # taken before console.WRITE_LOCK, never after

  def __enter__(self):
    if self.tty:
      self._ticker = console.Ticker(self._tick, self.redraw_s).__enter__()
    return self

  def __exit__(self, *exc):
    if self._ticker is not None:
      self._ticker.__exit__(*exc)
    if self.tty:
      self._write(self._fitted(time.perf_counter()), "\n")  # leave the last bar on screen, once
    return False

  def track(self, step: int, output) -> None:
    """Counts `step` as finished once `output` (a jax array it computes) is ready: checked now and
    at every redraw, without waiting on the device (`is_ready`)."""
    self._inflight.append((step, output))
    self._poll()

  def _poll(self) -> None:
    with self._state:  # the loop's thread and the ticker's both poll
      done = None
      while self._inflight and self._inflight[0][1].is_ready():
        done = self._inflight.popleft()[0]
      if done is not None:
        self.update(done)

  def _tick(self) -> None:
    self._poll()
    now = time.perf_counter()
    if now - self._last_print < 0.5 * self.redraw_s:
      return  # the poll has just drawn it
    if self.rate_from is not None or self._phase is not None:
      stall = None
      if self._phase is None and now - self._moved > console.QUIET_PHASE_S:
        stall = (doing(self._thread), self._moved)
      self._print(self._fitted(now, stall))

  def rate(self, now: float) -> float:
    """Steps per second since the first finished step; 0 until two steps are timed."""
    if self.rate_from is None or self._step <= self.rate_from[0] or now <= self.rate_from[1]:
      return 0.0
    return (self._step - self.rate_from[0]) / (now - self.rate_from[1])

  def update(self, step: int, metrics: dict | None = None, force: bool = False) -> None:
    with self._state:
      now = time.perf_counter()
      if step > self._step:
        self._step, self._moved = step, now
      if self.rate_from is None:
        self.rate_from = (step, now)
        force = True  # the first step after compilation is worth a line
      if metrics:
        self.metrics = metrics
      if force or now - self._last_print >= self.interval_s or self._step == self.total:
        self._print(self._fitted(now))

  @contextlib.contextmanager
  def phase(self, text: str):
    """A phase within the run (evaluating, saving, ...) shown after the bar while it lasts."""
    self._phase = (text, time.perf_counter())
    self._print(self._fitted(time.perf_counter()))
    try:
      yield
    finally:
      self._phase = None
      self._moved = time.perf_counter()  # a stall is timed from the end of a named phase

  def _fitted(self, now: float, stall=None) -> str:
    return self.line(now, console.columns(self.stream), stall)

  def line(self, now: float, width: int | None = None, stall: tuple[str, float] | None = None) -> str:
    """The bar at `now`, within `width` columns if given (see the module's docstring for what goes
    first); `stall`: (what the loop is doing, since when), shown when no phase is named."""
    rate = self.rate(now)
    eta = (self.total - self._step) / rate if rate > 0 else math.nan
    frac = self._step / self.total
    head, pct = f"step {self._step}/{self.total}", f" {100 * frac:5.1f}%"
    speed = f" {rate:6.2f} step/s ETA {_fmt_time(eta)}" if rate > 0 else " timing..."
    metrics = []
    if "train/loss" in self.metrics:
      metrics.append(f" loss {self.metrics['train/loss']:.4f}"
                     f" acc {self.metrics.get('train/accuracy', math.nan):.3f}")
    if "eval/accuracy" in self.metrics:
      metrics.append(f" eval_acc {self.metrics['eval/accuracy']:.3f}")
    if "perf/tflops_per_device" in self.metrics:  # how close the step is to the hardware
      share = self.metrics.get("perf/peak_share", math.nan)
      metrics.append(f" {self.metrics['perf/tflops_per_device']:.3g} TFLOP/s"
                     + (f" ({100 * share:.0f}% of peak)" if math.isfinite(share) else "")
                     + f" input {100 * self.metrics.get('perf/input_wait_share', 0.0):.0f}%")
    named = self._phase or stall
    what, seconds = (named[0], f" ({now - named[1]:.0f} s)") if named else ("", "")
    tail = f" | {what}{seconds}" if named else ""

    def bar(n: int) -> str:
      filled = int(n * frac)
      return f" [{'#' * filled}{'-' * (n - filled)}]"

    if width is None:
      return head + bar(24) + pct + speed + "".join(metrics) + tail
    limit = width - 1  # the last column is left free (see `console.fit`)
    for keep in range(len(metrics), -1, -1):  # the bar's picture goes first, then the metrics
      rest = pct + speed + "".join(metrics[:keep]) + tail
      space = limit - len(head) - len(rest) - 3  # " [" and "]"
      if space >= console.MIN_BAR:
        return head + bar(min(24, space)) + rest
      if len(head) + len(rest) <= limit:
        return head + rest
    for body in (head + pct + speed, head + speed, head):
      if len(body) + len(tail) <= limit:
        return body + tail
    mark = console.ellipsis(self.stream)
    if named:
      return console.fit(body + " | ", what, seconds, width, mark)
    return console.fit("", body, "", width, mark)

  def _print(self, text: str) -> None:
    self._write(text, "\r" if self.tty else "\n")

  def _write(self, text: str, end: str) -> None:
    with self._lock:
      self._last_print = time.perf_counter()
      self.stream.write(("\r\033[K" if self.tty else "") + text + end)
      self.stream.flush()


# What a thread is doing, read from its stack, innermost frame first: (a fragment of the file's
# path, the function's name or "" for any, the words a person reads). JAX's own frames come first
# in a stack, so compiling inside a dispatch reads "compiling".
_DOING = (
    ("jax/_src/compiler.py", "", "compiling (XLA)"),
    ("jax/_src/interpreters/mlir.py", "", "lowering to XLA"),
    ("jax/_src/interpreters/partial_eval.py", "", "tracing the step"),
    ("orbax/", "", "writing a checkpoint"),
    ("resnet_jax/training/parallel.py", "fetch", "waiting for the device (fetching metrics)"),
    ("resnet_jax/training/trainer.py", "evaluate", "evaluating"),
    ("resnet_jax/training/lifecycle.py", "save", "saving a checkpoint"),
    ("resnet_jax/training/lifecycle.py", "wait", "waiting for the checkpoint write"),
    ("resnet_jax/training/checkpoints.py", "", "saving a checkpoint"),
    ("resnet_jax/run/metrics_log.py", "", "writing metrics"),
    ("resnet_jax/data/", "", "preparing batches"),
)


def doing(thread_id: int) -> str:
  """What the thread `thread_id` is doing now, in words, from its stack (`_DOING`); for a stack none
  of them names, the innermost function of ours it is in ("in trainer.dispatch")."""
  frame = sys._current_frames().get(thread_id)  # pylint: disable=protected-access
  ours = None
  while frame is not None:
    path, function = frame.f_code.co_filename.replace(os.sep, "/"), frame.f_code.co_name
    for fragment, name, words in _DOING:
      if fragment in path and name in function:
        return words
    if ours is None and "/resnet_jax/" in path and "/resnet_jax/run/" not in path:
      ours = f"in {os.path.splitext(os.path.basename(path))[0]}.{function}"
    frame = frame.f_back
  return ours or "waiting"


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "--:--"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
