"""What a run tells the person watching it: one line per phase, and a progress bar from step 1.

Everything goes to stderr (stdout carries the final JSON result), from process 0 only. On a terminal
a background thread redraws the live line every second, host-side (it never waits on the device):
the bar's rate and ETA, or the phase under way with its seconds ("compiling the train step (12 s)"),
so the screen never sits still for more than a second. In a log file (not a terminal) a phase is one
line when it starts and the bar a plain line every `interval_s` seconds and at every metrics row, so
logs stay short.

A line that is redrawn in place (the bar, a phase under way) is fitted to the terminal's width, asked
at every redraw: a line one column too long wraps, and `\r` then returns to its second row only, so
each redraw would leave a stale row behind. What goes is what matters least: the bar's picture, then
the metrics, then the text of the phase (its seconds stay). Lines that stay on screen (said, or a
phase that ended) are wrapped at spaces instead, nothing cut. A stall of the bar over `QUIET_PHASE_S`
that no phase names is named after what the main thread is doing (`doing`). Python warnings and log
records, ours and our libraries', print as `resnet-jax: warning: ...`, each text once
(`routed_warnings`).
"""

import collections
import contextlib
import logging
import math
import os
import shutil
import sys
import textwrap
import threading
import time
import warnings

PREFIX = "resnet-jax: "
# How often the live line is redrawn on a terminal: within the 2 s a person reads as "stuck".
REDRAW_S = 1.0
# How often a log file (not a terminal) gets a progress line.
LOG_INTERVAL_S = 30.0


# A phase that is usually quick is named only once it has lasted this long; so is a stall of the bar.
QUIET_PHASE_S = 2.0
# The narrowest bar picture worth drawing; below it the percentage alone says as much.
MIN_BAR = 10
# Every console writes through one lock, so a line said by one never splits another's redraw.
_WRITE_LOCK = threading.RLock()


def columns(stream) -> int | None:
  """The width of the terminal `stream` writes to, asked now (it may have been resized); None when
  `stream` is not a terminal (a log file: nothing is redrawn, nothing needs fitting)."""
  if not (hasattr(stream, "isatty") and stream.isatty()):
    return None
  try:
    return os.get_terminal_size(stream.fileno()).columns or shutil.get_terminal_size().columns
  except (AttributeError, OSError, ValueError):  # a stand-in without a file descriptor
    return shutil.get_terminal_size().columns


def _ellipsis(stream) -> str:
  return "\u2026" if "utf" in (getattr(stream, "encoding", None) or "").lower() else "~"


def fit(head: str, text: str, tail: str, width: int | None, mark: str = "~") -> str:
  """`head + text + tail` in at most `width - 1` columns (the last column is left free: a character
  there makes some terminals wrap), cutting `text` first, with `mark` where it was cut."""
  line = head + text + tail
  if width is None or len(line) < width:
    return line
  room = width - 1 - len(head) - len(tail) - len(mark)
  if room >= 4:
    return head + text[:room] + mark + tail
  return line[:max(0, width - 1 - len(mark))] + mark


def wrap(text: str, width: int | None) -> str:
  """A line that stays on screen, wrapped at spaces within `width - 1` columns (paths are not cut)."""
  if width is None:
    return text
  return "\n".join("\n".join(textwrap.wrap(line, width - 1, subsequent_indent="  ",
                                           break_long_words=False, break_on_hyphens=False))
                   if len(line) >= width else line for line in text.split("\n"))


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
    self._lock = _WRITE_LOCK

  @property
  def stream(self):
    return self._stream or sys.stderr

  def tty(self) -> bool:
    return hasattr(self.stream, "isatty") and self.stream.isatty()

  def say(self, text: str) -> None:
    if self.enabled:
      width = columns(self.stream)
      with self._lock:
        # On a terminal, a line said during a live one (a phase, the bar) replaces it and goes above
        # it; the ticker redraws the live line below.
        self.stream.write(("\r\033[K" if width else "") + wrap(PREFIX + text, width) + "\n")
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

    def draw(last: bool = False):
      with self._lock:
        if tty:
          seconds = f" ({time.perf_counter() - t0:.0f} s)"
          if last:  # it stays on screen: all of it, wrapped
            self.stream.write("\r\033[K" + wrap(PREFIX + text + seconds, columns(self.stream)) + "\n")
          else:
            self.stream.write("\r\033[K" + fit(PREFIX, text, seconds, columns(self.stream),
                                                _ellipsis(self.stream)))
        elif not shown.is_set():
          self.stream.write(PREFIX + text + "\n")
        self.stream.flush()
        shown.set()

    if announce:
      draw()
    try:
      with _Ticker(draw, self.redraw_s if tty else math.inf,
                   first_s=self.redraw_s if announce else QUIET_PHASE_S):
        yield
    finally:
      if tty and shown.is_set():
        draw(last=True)


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
  accuracy and test accuracy. `track(step, array)` hands over a dispatched step's output instead:
  the bar counts the step when the array is ready, also while the loop's thread is blocked (a
  metrics fetch waits for every step dispatched before it: tens of seconds for a vectorised group).
  The rate starts at the first finished step, so compilation is left out.

  On a terminal the bar is one line redrawn in place, fitted to the terminal's width, every second
  between updates, with the phase under way (`phase(text)`) or, when no step has finished for
  `QUIET_PHASE_S` and no phase is named, what the thread that made the bar is doing (`doing`); use it
  as a context manager so that the redrawing stops with it, leaving the last bar on screen.
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
    self._moved = time.perf_counter()  # when the step count last moved: a stall is timed from it
    self._thread = threading.get_ident()  # the loop's thread: a stall is named from its stack
    self._lock = _WRITE_LOCK
    self._ticker = None
    self._inflight = collections.deque()  # (step, output array): dispatched, not yet seen done
    self._state = threading.RLock()  # taken before _WRITE_LOCK, never after

  def __enter__(self):
    if self.tty:
      self._ticker = _Ticker(self._tick, self.redraw_s).__enter__()
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
      if self._phase is None and now - self._moved > QUIET_PHASE_S:
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
    return self.line(now, columns(self.stream), stall)

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
    limit = width - 1  # the last column is left free (see `fit`)
    for keep in range(len(metrics), -1, -1):  # the bar's picture goes first, then the metrics
      rest = pct + speed + "".join(metrics[:keep]) + tail
      room = limit - len(head) - len(rest) - 3  # " [" and "]"
      if room >= MIN_BAR:
        return head + bar(min(24, room)) + rest
      if len(head) + len(rest) <= limit:
        return head + rest
    for body in (head + pct + speed, head + speed, head):
      if len(body) + len(tail) <= limit:
        return body + tail
    mark = _ellipsis(self.stream)
    return fit(body + " | ", what, seconds, width, mark) if named else fit("", body, "", width, mark)

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


@contextlib.contextmanager
def routed_warnings(say=None):
  """Within the block, each Python warning shown (ours, and the libraries' we call: gcsfs,
  google-auth, orbax, ...) is one line `resnet-jax: warning: TEXT`, without its source line, and
  each text only once: libraries that touch the warning filters (`warnings.catch_warnings`) make
  Python forget what it has shown, so a credentials warning otherwise repeats at every bucket call.
  So is a library's log record of level WARNING or above that no handler of its own prints (Python
  would print its bare text: gcsfs's `logger.warning`, JAX's), as `resnet-jax: warning: ...` (or
  `error: ...`)."""
  say = say or Console().say
  seen = set()
  previous = warnings.showwarning

  def once(kind: str, message) -> None:
    text = " ".join(str(message).split())
    if (kind, text) not in seen:
      seen.add((kind, text))
      say(f"{kind}: {text}")

  def show(message, category, filename, lineno, file=None, line=None):  # pylint: disable=unused-argument
    once("warning", message)

  handler = _LogRecords(once)
  warnings.showwarning = show
  logging.root.addHandler(handler)
  try:
    yield
  finally:
    logging.root.removeHandler(handler)
    warnings.showwarning = previous


class _LogRecords(logging.Handler):
  """Log records of WARNING and above that no handler below the root prints: to `once(kind, text)`."""

  def __init__(self, once):
    super().__init__(logging.WARNING)
    self.once = once

  def emit(self, record: logging.LogRecord) -> None:
    logger = logging.getLogger(record.name)
    while logger is not logging.root:
      if logger.handlers:  # printed by the library's own handler already
        return
      if not logger.propagate:
        break
      logger = logger.parent
    try:
      text = record.getMessage()
    except Exception:  # pylint: disable=broad-except  # a malformed record: logging's own report
      self.handleError(record)
      return
    self.once("warning" if record.levelno < logging.ERROR else "error", text)


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "--:--"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
