"""What a person sees: every phase of a run, a sweep and a report says what it does (captured output),
and on a pseudo-terminal of 60, 80 and 200 columns every live line fits, nothing stale is left, a
stall is named, warnings come once, and help wraps to the width (issue 35)."""

import contextlib
import fcntl
import io
import logging
import os
import re
import struct
import sys
import termios
import threading
import time

import pytest

from tests.helpers import small_config
from resnet_jax.experiments import report
from resnet_jax.run import console, progress
from resnet_jax.training import loop


def test_progress_bar_rate_from_two_timed_steps_not_the_log_cadence(monkeypatch):
  clock = iter([10.0, 10.0, 10.5, 10.5, 11.0, 11.0, 11.0, 11.0])
  monkeypatch.setattr(console.time, "perf_counter", lambda: next(clock))
  out = io.StringIO()  # not a terminal: plain lines
  bar = progress.ProgressBar(total=100, start=0, stream=out, interval_s=0.0)
  bar.update(1)  # the first finished step (compilation is before it): shown at once, no rate yet
  bar.update(2)  # one step in 0.5 s
  lines = out.getvalue().splitlines()
  assert lines[0].startswith("step 1/100") and "timing..." in lines[0] and "0.00 step/s" not in lines[0]
  assert re.search(r"step 2/100 .* 2\.00 step/s ETA 00:49", lines[1]), lines[1]
  bar.update(3, {"train/loss": 1.5, "train/accuracy": 0.25, "eval/accuracy": 0.5}, force=True)
  assert "loss 1.5000 acc 0.250 eval_acc 0.500" in out.getvalue().splitlines()[-1]


def test_a_run_says_compiling_progress_from_step_1_resumed_and_where_metrics_are(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  # log_every_steps above the run's length: the bar must still count steps as they finish.
  loop.train_and_evaluate(small_config(total_steps=4, log_every_steps=4, checkpoint_every_steps=4,
                                       lr_decay_steps=()), workdir)
  err = capsys.readouterr().err
  assert "resnet-jax: " + workdir + ": resnet8 on digits, 4 steps; loading the data" in err
  assert "compiling the train step (first call); training from step 1" in err
  assert re.search(r"^step [1-3]/4 ", err, re.M), err  # progress before the first metrics row
  assert f"finished 4 steps; metrics in {workdir}/metrics.jsonl" in err
  assert err.index("compiling the train step") < err.index("step 4/4")

  loop.train_and_evaluate(small_config(total_steps=6, log_every_steps=2, lr_decay_steps=()), workdir)
  err = capsys.readouterr().err
  assert re.search(r"resumed from step 4 \(checkpoint .*checkpoints/4\)", err), err
  assert "training from step 5" in err

  loop.train_and_evaluate(small_config(total_steps=6, log_every_steps=2, lr_decay_steps=()), workdir)
  assert "already finished (6/6 steps); nothing to do" in capsys.readouterr().err


def test_report_says_each_phase_and_the_paths_it_wrote(tmp_path):
  root = tmp_path / "runs"
  loop.train_and_evaluate(small_config(total_steps=2, log_every_steps=2, checkpoint_every_steps=2,
                                       lr_decay_steps=()), str(root / "solo"))
  lines = []
  report.write_report(str(root), plots=True, responses=False, log=lines.append)
  assert lines[0] == f"report of 1 run(s) under {root}: reading their metrics"
  assert any("curves" in line for line in lines[1:-1]), lines  # a line per plot
  assert lines[-1].startswith("wrote ") and str(root / "summary.md") in lines[-1]
  assert os.path.exists(root / "curves.png")
  with open(root / "summary.csv") as f:
    assert "solo" in f.read()  # named after the run, not "."
  # A report of one run's own workdir is named after that run too.
  report.write_report(str(root / "solo"), plots=False, log=lambda _: None)
  with open(root / "solo" / "summary.md") as f:
    assert "| solo |" in f.read()


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_on_a_terminal_a_phase_counts_its_seconds_and_the_bar_redraws_between_steps():
  import time
  out = _Terminal()
  con = console.Console(stream=out, redraw_s=0.05)
  with con.phase("compiling the train step"):
    time.sleep(0.3)  # nothing calls the console meanwhile: the ticker redraws
    con.say("a line said meanwhile")
    time.sleep(0.1)
  text = out.getvalue()
  assert text.count("resnet-jax: compiling the train step (") >= 3, text
  assert "\r\033[Kresnet-jax: a line said meanwhile\n" in text  # above the live line
  assert text.endswith(" s)\n")  # the phase's last redraw stays, with its seconds

  out = _Terminal()
  with progress.ProgressBar(total=10, start=0, stream=out, redraw_s=0.05) as bar:
    bar.update(1)
    before = out.getvalue().count("step 1/10")
    time.sleep(0.3)  # one slow step: no update, the bar is redrawn anyway
    assert out.getvalue().count("step 1/10") >= before + 3
    with bar.phase("evaluating at step 1"):
      time.sleep(0.2)
    assert re.search(r"step 1/10 .* \| evaluating at step 1 \(0 s\)", out.getvalue())
  assert out.getvalue().endswith("\n")  # the last bar is left on screen


def test_a_quick_phase_says_nothing_a_slow_one_is_named_and_logs_get_one_line(monkeypatch):
  import time
  monkeypatch.setattr(console, "QUIET_PHASE_S", 0.1)
  out = io.StringIO()  # a log file
  con = console.Console(stream=out, redraw_s=0.05)
  with con.phase("saving", announce=False):
    pass
  assert out.getvalue() == ""
  with con.phase("saving slowly", announce=False):
    time.sleep(0.4)
  with con.phase("loading the data"):
    time.sleep(0.2)
  assert out.getvalue() == "resnet-jax: saving slowly\nresnet-jax: loading the data\n"
  lines = []
  with console.phase(lines.append, "plotting"):  # any other callable hears the phase once
    pass
  assert lines == ["plotting"]


# --- A console that fits: on a pseudo-terminal of 60, 80 and 200 columns. ---

WIDTHS = (60, 80, 200)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def screen(data: str, width: int) -> tuple[list[str], int]:
  """What a terminal `width` columns wide shows after `data` (`\\r`, `\\n`, erase-line, wrapping at the
  edge as xterm does), and how many times a line wrapped."""
  rows, row, col, wraps, i = [[]], 0, 0, 0, 0
  while i < len(data):
    if data.startswith("\033[K", i):
      del rows[row][col:]
      i += 3
      continue
    ch = data[i]
    i += 1
    if ch == "\r":
      col = 0
    elif ch == "\n":  # the pty's ONLCR makes it \r\n
      row, col = row + 1, 0
    else:
      if col == width:  # a character past the last column: the line wraps
        row, col, wraps = row + 1, 0, wraps + 1
      while len(rows) <= row:
        rows.append([])
      line = rows[row]
      line += [" "] * (col + 1 - len(line))
      line[col] = ch
      col += 1
    while len(rows) <= row:
      rows.append([])
  return ["".join(r).rstrip() for r in rows], wraps


def _openpty(width: int) -> tuple[int, int]:
  """A pseudo-terminal `width` columns wide: (master, slave) file descriptors."""
  master, slave = os.openpty()
  fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, width, 0, 0))
  return master, slave


def _drain(master: int, received: list) -> None:
  """Reads what the terminal receives into `received` until its slave side is closed."""
  while True:
    try:
      chunk = os.read(master, 65536)
    except OSError:  # the slave side closed (Linux reports EIO)
      return
    if not chunk:
      return
    received.append(chunk)


@contextlib.contextmanager
def pseudo_terminal(width: int):
  """A text stream on the slave side of a pty `width` columns wide, and a list collecting what the
  terminal received (complete once the block ends)."""
  master, slave = _openpty(width)
  received = []
  reader = threading.Thread(target=_drain, args=(master, received), daemon=True)
  reader.start()
  stream = io.TextIOWrapper(io.FileIO(slave, "w"), encoding="utf-8", line_buffering=True)
  out = []
  try:
    yield stream, out
  finally:
    stream.flush()
    stream.close()
    reader.join(timeout=5)
    os.close(master)
    out.append(b"".join(received).decode("utf-8"))


def test_screen_wraps_and_overwrites_as_a_terminal_does():
  assert screen("abcdef", 4) == (["abcd", "ef"], 1)
  assert screen("abc\rx\033[K", 4) == (["x"], 0)
  assert screen("abcd\r\nx", 4) == (["abcd", "x"], 0)  # a full line does not wrap by itself


@pytest.mark.parametrize("width", WIDTHS)
def test_bar_and_phases_fit_the_terminal_and_leave_no_stale_lines(width):
  text = ("runs/quickstart: resnet20 on digits, 300 steps; loading the data and building the "
          "model's optimizer")
  with pseudo_terminal(width) as (stream, out):
    con = console.Console(stream=stream, redraw_s=0.02)
    with con.phase(text):
      time.sleep(0.1)
      con.say("a line said meanwhile, which is long enough to need more than one row at sixty "
              "columns, and stays whole")
      time.sleep(0.1)
    with progress.ProgressBar(total=300, start=0, stream=stream, redraw_s=0.02, interval_s=0.0) as bar:
      for step in range(1, 301, 7):
        bar.update(step, {"train/loss": 0.1234, "train/accuracy": 0.5, "eval/accuracy": 0.927})
        if step == 99:
          with bar.phase("evaluating 8 members at step 99"):
            time.sleep(0.1)
      bar.update(300, force=True)
      time.sleep(0.05)
  rows, wraps = screen(out[0], width)
  rows = [r for r in rows if r]
  assert wraps == 0, rows  # nothing reached past the last column
  assert all(len(r) < width for r in rows), rows
  # On screen at the end: the phase (wrapped at spaces, whole), the said line above it, one bar.
  said = [i for i, r in enumerate(rows) if r.startswith("resnet-jax: a line said")]
  phase = [i for i, r in enumerate(rows) if r.startswith("resnet-jax: runs/quickstart")]
  assert len(said) == 1 and len(phase) == 1 and said[0] < phase[0], rows
  joined = " ".join(r.strip() for r in rows[phase[0]:])
  assert text in joined and "stays whole" in " ".join(r.strip() for r in rows[:phase[0]])
  bars = [r for r in rows if r.startswith("step ")]
  assert len(bars) == 1 and bars[0].startswith("step 300/300"), rows
  if width == 200:  # wide enough for everything
    assert re.fullmatch(r"step 300/300 \[#{24}\] 100\.0% .* step/s ETA 00:00 loss 0\.1234 acc 0\.500 "
                        r"eval_acc 0\.927", bars[0]), bars


@pytest.mark.parametrize("width", WIDTHS)
def test_the_bar_drops_its_picture_then_metrics_and_keeps_the_phase_seconds(width):
  bar = progress.ProgressBar(total=60, start=0, stream=io.StringIO())
  bar.update(1, {"train/loss": 0.5, "train/accuracy": 0.25, "eval/accuracy": 0.75})
  bar._phase = ("evaluating 8 members at step 60 and writing what they say to the log", 0.0)
  line = bar.line(12.0, width)
  assert len(line) < width and line.startswith("step 1/60") and line.endswith(" (12 s)"), line
  full = bar.line(12.0)
  assert len(full) > 60 and "[" in full and "eval_acc" in full
  if width == 200:
    assert line == full
  for narrow in range(12, width):  # any width, however narrow, with and without the phase
    assert len(bar.line(12.0, narrow)) < narrow, (narrow, bar.line(12.0, narrow))
    bar._phase, saved = None, bar._phase
    assert len(bar.line(12.0, narrow)) < narrow, (narrow, bar.line(12.0, narrow))
    bar._phase = saved


def test_a_stall_is_named_after_what_the_loop_is_doing(monkeypatch):
  monkeypatch.setattr(console, "QUIET_PHASE_S", 0.1)
  monkeypatch.setitem(progress.__dict__, "_DOING",
                      (("tests/test_console.py", "_waiting_for_metrics", "fetching metrics"),))
  with pseudo_terminal(80) as (stream, out):
    with progress.ProgressBar(total=60, start=0, stream=stream, redraw_s=0.02) as bar:
      bar.update(1)
      _waiting_for_metrics(0.4)  # the loop's thread is stuck here: no update, no phase named
      bar.update(2)
      time.sleep(0.05)  # moving again: the stall is no longer shown
  assert re.search(r"step 1/60 .*timing\.\.\. \| fetching metrics \(0 s\)", out[0]), out[0]
  assert not re.search(r"step 2/60 .*fetching", out[0])
  assert progress.doing(-1) == "waiting"  # no such thread


def _waiting_for_metrics(seconds):
  time.sleep(seconds)


@pytest.mark.parametrize("width", WIDTHS)
def test_a_training_run_fits_the_terminal(width, tmp_path, monkeypatch):
  """The loop's own console, on a pty: each redrawn line fits, and no stale bar or phase is left."""
  monkeypatch.chdir(tmp_path)  # a short workdir: paths are never cut, so they must fit
  monkeypatch.setattr(console, "REDRAW_S", 0.02)
  with pseudo_terminal(width) as (stream, out):
    monkeypatch.setattr(sys, "stderr", stream)
    loop.train_and_evaluate(small_config(total_steps=6, log_every_steps=2, eval_every_steps=3,
                                         lr_decay_steps=()), "run")
    monkeypatch.undo()
  rows, wraps = screen(out[0], width)
  rows = [r for r in rows if r]
  assert wraps == 0 and all(len(r) < width for r in rows), rows
  assert sum(r.startswith("step ") for r in rows) == 1, rows  # one bar left, the last
  done = [i for i, r in enumerate(rows) if r.startswith("resnet-jax: finished 6 steps")]
  spent = [i for i, r in enumerate(rows) if r.startswith("resnet-jax: goodput ")]
  assert len(done) == len(spent) == 1 and done[0] < spent[0], rows  # where the wall time went, last
  compiling = [r for r in rows if "compiling the train step" in r]
  assert len(compiling) == 1, rows


def test_warnings_print_once_each_as_resnet_jax_warning(tmp_path):
  import warnings
  lines = []
  with console.routed_warnings(lines.append):
    for _ in range(3):
      warnings.warn("gs://bucket/run is a bucket: it cannot be locked", UserWarning)
      with warnings.catch_warnings():  # what libraries do: Python forgets what it showed
        warnings.simplefilter("default")
    warnings.warn("a warning\n  on two lines", UserWarning)
    warnings.warn_explicit("a library's", UserWarning, "lib.py", 1)
  assert lines == ["warning: gs://bucket/run is a bucket: it cannot be locked",
                   "warning: a warning on two lines", "warning: a library's"]
  with pseudo_terminal(80) as (stream, out):
    with console.routed_warnings(console.Console(stream=stream).say):
      warnings.warn("x", UserWarning)
  assert out[0] == "\r\033[Kresnet-jax: warning: x\r\n"
  lines.clear()
  library = logging.getLogger("a_library.core")  # no handler of its own: Python prints its bare text
  own = logging.getLogger("chatty")
  own.addHandler(logging.NullHandler())  # one with its own handler prints (or not) as it chooses
  with console.routed_warnings(lines.append):
    for _ in range(3):
      library.warning("Failed to move file using moveTo API: %s. Falling back.", "503")
    library.info("not shown")
    library.error("it failed")
    own.warning("not ours to print")
  own.handlers.clear()
  assert lines == ["warning: Failed to move file using moveTo API: 503. Falling back.",
                   "error: it failed"]
  assert console._LogRecords not in {type(h) for h in logging.root.handlers}  # removed after


def test_the_command_prints_a_bucket_workdirs_warning_once_without_its_source_line(monkeypatch, capsys):
  from resnet_jax import cli  # pylint: disable=g-import-not-at-top
  from resnet_jax.run import workdir  # pylint: disable=g-import-not-at-top

  def two_members(args):  # a sweep locks each member's workdir: the same warning, twice
    del args
    for _ in range(2):
      with workdir.Lock("gs://bucket/run"):
        pass
    return 0

  monkeypatch.setitem(cli.COMMANDS, "models", two_members)
  assert cli.main(["models"]) == 0
  assert capsys.readouterr().err == ("resnet-jax: warning: gs://bucket/run is a bucket: it cannot be "
                                     "locked, so make sure no other job writes into it.\n")


class _Output:
  """A stand-in for a dispatched step's output array: ready once the fake device says so."""

  def __init__(self):
    self.ready = threading.Event()

  def is_ready(self):
    return self.ready.is_set()


def test_the_bar_counts_tracked_steps_while_the_loop_is_blocked():
  """A fetch blocks the loop's thread until every dispatched step is done; the bar still follows
  the steps as they finish (its ticker polls them), so it never sits at step 1 meanwhile."""
  outputs = {step: _Output() for step in range(1, 21)}
  with pseudo_terminal(80) as (stream, out):
    with progress.ProgressBar(total=20, start=0, stream=stream, redraw_s=0.02) as bar:
      for step, output in outputs.items():  # 20 asynchronous dispatches: nothing done yet
        bar.track(step, output)
      assert bar._step == 0  # pylint: disable=protected-access
      for step in range(1, 11):  # the device finishes ten of them while the loop waits in a fetch
        outputs[step].ready.set()
      time.sleep(0.2)
      assert bar._step == 10  # pylint: disable=protected-access
      for step in range(11, 21):
        outputs[step].ready.set()
      time.sleep(0.1)
  assert "step 10/20" in out[0] and re.search(r"step 20/20 .* step/s", out[0]), out[0]


def run_on_pty(argv: list[str], width: int) -> str:
  """What `argv` prints on a terminal `width` columns wide (stdout and stderr), COLUMNS unset."""
  import subprocess  # pylint: disable=g-import-not-at-top

  master, slave = _openpty(width)
  env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
  env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                               if p])
  proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT)
  os.close(slave)
  chunks = []
  _drain(master, chunks)
  proc.wait(timeout=60)
  os.close(master)
  return b"".join(chunks).decode("utf-8").replace("\r\n", "\n")


@pytest.mark.parametrize("width", WIDTHS)
def test_help_wraps_to_the_terminal(width):
  text = run_on_pty([sys.executable, "-m", "resnet_jax.cli", "sweep", "--help"], width)
  lines = text.rstrip("\n").splitlines()
  assert "exit codes:" in text and len(lines) > 10, text
  assert max(map(len, lines)) <= min(width, 100), text  # past 100 columns it reads as at 100
  assert max(map(len, lines)) > min(width, 100) - 15, text  # and it uses the width it has


def test_the_line_says_tflops_share_of_peak_and_input_wait():
  bar = progress.ProgressBar(total=10, start=0, stream=io.StringIO())
  bar.update(5, {"train/loss": 0.5, "train/accuracy": 0.5, "perf/tflops_per_device": 0.0912,
                 "perf/peak_share": 0.48, "perf/input_wait_share": 0.031})
  assert bar.line(time.perf_counter()).endswith("0.0912 TFLOP/s (48% of peak) input 3%")
  bar.update(6, {"train/loss": 0.5, "perf/tflops_per_device": 1.5, "perf/input_wait_share": 0.0})
  assert bar.line(time.perf_counter()).endswith("1.5 TFLOP/s input 0%")  # a device with no peak
