"""What a person sees: every phase of a run, a sweep and a report says what it does (captured output)."""

import io
import os
import re

from tests.helpers import small_config
from resnet_jax.experiments import report
from resnet_jax.run import console
from resnet_jax.training import loop


def test_progress_bar_rate_from_two_timed_steps_not_the_log_cadence(monkeypatch):
  clock = iter([10.0, 10.0, 10.5, 10.5, 11.0, 11.0, 11.0, 11.0])
  monkeypatch.setattr(console.time, "perf_counter", lambda: next(clock))
  out = io.StringIO()  # not a terminal: plain lines
  bar = console.ProgressBar(total=100, start=0, stream=out, interval_s=0.0)
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
  with console.ProgressBar(total=10, start=0, stream=out, redraw_s=0.05) as bar:
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
