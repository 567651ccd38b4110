"""What a run tells the person watching it: one line per phase, and (`progress`) a bar from step 1.

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
that no phase names is named after what the main thread is doing (`progress.doing`). Python warnings and log
records, ours and our libraries', print as `resnet-jax: warning: ...`, each text once
(`routed_warnings`).
"""

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
WRITE_LOCK = threading.RLock()


def columns(stream) -> int | None:
  """The width of the terminal `stream` writes to, asked now (it may have been resized); None when
  `stream` is not a terminal (a log file: nothing is redrawn, nothing needs fitting)."""
  if not (hasattr(stream, "isatty") and stream.isatty()):
    return None
  try:
    return os.get_terminal_size(stream.fileno()).columns or shutil.get_terminal_size().columns
  except (AttributeError, OSError, ValueError):  # a stand-in without a file descriptor
    return shutil.get_terminal_size().columns


def ellipsis(stream) -> str:
  return "\u2026" if "utf" in (getattr(stream, "encoding", None) or "").lower() else "~"


def fit(head: str, text: str, tail: str, width: int | None, mark: str = "~") -> str:
  """`head + text + tail` in at most `width - 1` columns (the last column is left free: a character
  there makes some terminals wrap), cutting `text` first, with `mark` where it was cut."""
  line = head + text + tail
  if width is None or len(line) < width:
    return line
  keep = width - 1 - len(head) - len(tail) - len(mark)  # columns left for `text`
  if keep >= 4:
    return head + text[:keep] + mark + tail
  return line[:max(0, width - 1 - len(mark))] + mark


def wrap(text: str, width: int | None) -> str:
  """A line that stays on screen, wrapped at spaces within `width - 1` columns (paths are not cut)."""
  if width is None:
    return text
  return "\n".join("\n".join(textwrap.wrap(line, width - 1, subsequent_indent="  ",
                                           break_long_words=False, break_on_hyphens=False))
                   if len(line) >= width else line for line in text.split("\n"))


class Ticker:
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
    self._lock = WRITE_LOCK

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
                                                ellipsis(self.stream)))
        elif not shown.is_set():
          self.stream.write(PREFIX + text + "\n")
        self.stream.flush()
        shown.set()

    if announce:
      draw()
    try:
      with Ticker(draw, self.redraw_s if tty else math.inf,
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
