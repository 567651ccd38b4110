"""What a run tells the person watching it: one line per phase, and a progress bar from step 1.

Everything goes to stderr (stdout carries the final JSON result), from process 0 only. On a terminal
a background thread redraws the live line every second, host-side (it never waits on the device):
the bar's rate and ETA, or the phase under way with its seconds ("compiling the train step (12 s)"),
so the screen never sits still for more than a second. In a log file (not a terminal) a phase is one
line when it starts and the bar a plain line every `interval_s` seconds and at every metrics row, so
logs stay short.
"""

import contextlib
import math
import sys
import threading
import time

PREFIX = "resnet-jax: "
# How often the live line is redrawn on a terminal: within the 2 s a person reads as "stuck".
REDRAW_S = 1.0
# How often a log file (not a terminal) gets a progress line.
LOG_INTERVAL_S = 30.0


# A phase that is usually quick is named only once it has lasted this long.
QUIET_PHASE_S = 2.0


class _Ticker:
  """A daemon thread calling `draw()` after `first_s` seconds, then every `interval_s` (inf: once),
  until the `with` block ends."""

  def __init__(self, draw, interval_s: float, first_s: float | None = None):
    self.draw, self.interval_s = draw, interval_s
    self.first_s = interval_s if first_s is None else first_s
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, daemon=True, name="resnet-jax-console")

  def _loop(self) -> None:
    wait = self.first_s
    while not self._stop.wait(wait):
      self.draw()
      if not math.isfinite(self.interval_s):
        return
      wait = self.interval_s

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    return False


class Console:
  """`say(text)`: one line on stderr, prefixed, from the process that reports (or nowhere);
  `phase(text)`: the same line for a phase that may take a while, counting its seconds on a terminal."""

  def __init__(self, enabled: bool = True, stream=None, redraw_s: float = REDRAW_S):
    self.enabled, self._stream, self.redraw_s = enabled, stream, redraw_s
    self._lock = threading.Lock()
    self._live = None  # the phase line being redrawn, if any

  @property
  def stream(self):
    return self._stream or sys.stderr

  def tty(self) -> bool:
    return hasattr(self.stream, "isatty") and self.stream.isatty()

  def say(self, text: str) -> None:
    if self.enabled:
      with self._lock:
        # A line said during a live phase goes above it; the ticker redraws the phase below.
        self.stream.write(("\r\033[K" if self._live else "") + PREFIX + text + "\n")
        self.stream.flush()

  @contextlib.contextmanager
  def phase(self, text: str, announce: bool = True):
    """Names what the process is doing until the block ends (loading, compiling, saving, ...).

    With `announce=False` the phase is named only once it has lasted `QUIET_PHASE_S` seconds, for
    phases that are usually quick (waiting for a checkpoint write).
    """
    if not self.enabled:
      yield
      return
    t0, tty = time.perf_counter(), self.tty()
    shown = threading.Event()

    def draw():
      with self._lock:
        if tty:
          self.stream.write(f"\r\033[K{PREFIX}{text} ({time.perf_counter() - t0:.0f} s)")
        elif not shown.is_set():
          self.stream.write(PREFIX + text + "\n")
        self.stream.flush()
        shown.set()

    if announce:
      draw()
    self._live = text if tty else None
    try:
      with _Ticker(draw, self.redraw_s if tty else math.inf,
                   first_s=self.redraw_s if announce else QUIET_PHASE_S):
        yield
    finally:
      self._live = None
      if tty and shown.is_set():
        draw()
        with self._lock:
          self.stream.write("\n")
          self.stream.flush()


def phase(say, text: str, announce: bool = True):
  """`say`'s console's phase (see `Console.phase`); for any other callable, `say(text)` (if
  `announce`) and nothing more."""
  owner = getattr(say, "__self__", None)
  if isinstance(owner, Console):
    return owner.phase(text, announce)
  if announce:
    say(text)
  return contextlib.nullcontext()


class ProgressBar:
  """A one-line progress bar: step, rate and ETA as soon as two steps are timed, last metrics.

  `update(step)` is called for every finished step (host-side counts: no device sync), so the rate
  does not depend on how often metrics are fetched; `update(step, row)` also shows the row's loss,
  accuracy and test accuracy. The rate starts at the first finished step, so compilation is left out.
  On a terminal the bar is redrawn every second between updates (with the phase under way, from
  `phase(text)`); use it as a context manager so that the redrawing stops with it.
  """

  def __init__(self, total: int, start: int, stream=None, interval_s: float | None = None,
               redraw_s: float = REDRAW_S):
    self.total, self.start = total, start
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.interval_s = interval_s if interval_s is not None else (0.25 if self.tty else LOG_INTERVAL_S)
    self.redraw_s = redraw_s
    self.rate_from = None  # (step, time) of the first finished step
    self.metrics = {}
    self._phase = None  # (text, start time) of the phase under way
    self._last_print = -math.inf
    self._step = start
    self._lock = threading.Lock()
    self._ticker = None

  def __enter__(self):
    if self.tty:
      self._ticker = _Ticker(self._tick, self.redraw_s).__enter__()
    return self

  def __exit__(self, *exc):
    if self._ticker is not None:
      self._ticker.__exit__(*exc)
    if self.tty and self._step < self.total:
      self._write(self.line(time.perf_counter()), "\n")  # leave the last bar on screen
    return False

  def _tick(self) -> None:
    if self.rate_from is not None or self._phase is not None:
      self._print(self.line(time.perf_counter()))

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

  @contextlib.contextmanager
  def phase(self, text: str):
    """A phase within the run (evaluating, saving, ...) shown after the bar while it lasts."""
    self._phase = (text, time.perf_counter())
    self._print(self.line(time.perf_counter()))
    try:
      yield
    finally:
      self._phase = None

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
    phase = self._phase
    if phase is not None:
      text += f" | {phase[0]} ({now - phase[1]:.0f} s)"
    return text

  def _print(self, text: str) -> None:
    self._write(text, "\r" if self.tty and self._step < self.total else "\n")

  def _write(self, text: str, end: str) -> None:
    with self._lock:
      self._last_print = time.perf_counter()
      self.stream.write(("\r\033[K" if self.tty else "") + text + end)
      self.stream.flush()


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "--:--"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
