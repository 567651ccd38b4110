"""Presets, sweeps and reports (issue: batch experiments from config files)."""

import csv
import json
import os
import textwrap

import jax
import numpy as np
import pytest

from resnet_jax import cli
from resnet_jax import config as config_lib
from resnet_jax.experiments import report, sweep
from resnet_jax.run import metrics_log
from resnet_jax.run.errors import ConfigError, WorkdirError
from resnet_jax.training import loop

CIFAR = [f"{k}{d}" for k in ("resnet", "plain") for d in (20, 32, 44, 56, 110)]
IMAGENET = [f"{k}{d}" for k in ("resnet", "plain") for d in (18, 34, 50, 101, 152)] + [
    "resnet50-modern", "plain34-modern"]


def _tiny(spec, image_size):
  """The preset on synthetic data of a tiny image size: its model, optimizer and step, not its data."""
  config = config_lib.load(spec, {"dataset": "synthetic", "image_size": str(image_size),
                                     "batch_size": "8", "eval_batch_size": "8", "num_devices": "1",
                                     "bn_group_size": "0", "augment": "none", "eval_crops": "center",
                                     "color_augment": "none"})
  return config, loop.Trainer(config)


@pytest.mark.parametrize("spec", [f"configs/cifar10.py:{m}" for m in CIFAR] +
                         [f"configs/imagenet.py:{m}" for m in IMAGENET])
def test_every_preset_builds_and_traces_its_train_step(spec):
  config, trainer = _tiny(spec, 8 if "cifar10" in spec else 32)
  fn, args = trainer.dispatch_call(0, 1)
  _, metrics = jax.eval_shape(fn, trainer.abstract_state(), *args)
  assert metrics["train/loss"].shape == ()
  original = config_lib.load(spec)
  assert original.momentum == 0.9 and original.weight_decay == 1e-4
  if "cifar10" in spec:
    assert (original.batch_size, original.learning_rate, original.total_steps) == (128, 0.1, 64000)
    assert original.lr_decay_steps == (32000, 48000) and original.augment == "cifar"
    assert original.normalization == "per_pixel_mean"
    assert (original.warmup_steps > 0) == spec.endswith("110")


@pytest.mark.parametrize("spec,size", [("configs/cifar10.py:resnet20", 8), ("configs/cifar10.py:plain20", 8),
                                       ("configs/imagenet.py:resnet18-modern", 32)])
def test_presets_run_one_step(spec, size):
  _, trainer = _tiny(spec, size)
  state = trainer.strategy.put_state(trainer.init_state())
  state, metrics = trainer.dispatch(state, 0, 1)
  assert np.isfinite(float(trainer.strategy.fetch(metrics)["train/loss"]))


def test_preset_argument_errors():
  with pytest.raises(ConfigError, match="expected a CIFAR net"):
    config_lib.load("configs/cifar10.py:resnet50")
  with pytest.raises(ConfigError, match="the variants are -A, -B, -C .* and -modern"):
    config_lib.load("configs/imagenet.py:resnet50-old")
  modern = config_lib.load("configs/imagenet.py:resnet50-modern")
  assert modern.lr_scaling == "linear" and modern.dtype == "bfloat16" and modern.label_smoothing == 0.1


SWEEP = textwrap.dedent('''
    from resnet_jax.config import default_config

    def get_config():
      c = default_config()
      c.update(dataset="digits", batch_size=16, eval_batch_size=100, total_steps=4, lr_decay_steps=(),
               log_every_steps=2, eval_every_steps=2, checkpoint_every_steps=2, num_devices=1)
      return c

    def member_config(values):
      c = get_config()
      if values["model"] == "resnet20":  # valid, but fails as it starts: a member failing alone
        c.init_from = "no_such_run"
      return c

    def get_grid():
      return {"model": ["resnet8", "resnet20", "plain8"], "seed": [0]}
''')


@pytest.fixture()
def sweep_file(tmp_path):
  path = tmp_path / "tiny_sweep.py"
  path.write_text(SWEEP)
  return str(path)


def test_sweep_survives_failure_skips_finished_and_resumes(tmp_path, sweep_file):
  workdir = str(tmp_path / "sweep")
  calls = []

  def counting_train(config, run_dir):
    calls.append(os.path.basename(run_dir))
    return loop.train_and_evaluate(config, run_dir)

  # Short first pass (2 steps), e.g. a sweep cut short: resnet20's init_from is not a run, so it
  # fails alone as it starts (a bad value would have stopped the sweep before any member trained).
  results = sweep.run_sweep(sweep_file, workdir, overrides={"total_steps": "2"}, train_fn=counting_train,
                            log=lambda *_: None)
  assert results == {"resnet8-seed0": "done", "resnet20-seed0": "failed", "plain8-seed0": "done"}
  status = sweep.read_status(os.path.join(workdir, "resnet20-seed0"))
  assert status["status"] == "failed" and "init_from='no_such_run'" in status["error"]

  # The full sweep: unfinished members resume from their step-2 checkpoints.
  calls.clear()
  results = sweep.run_sweep(sweep_file, workdir, train_fn=counting_train, log=lambda *_: None)
  assert results["resnet8-seed0"] == "done" and calls == ["resnet8-seed0", "resnet20-seed0", "plain8-seed0"]
  rows = metrics_log.read_metrics(os.path.join(workdir, "resnet8-seed0"))
  assert [r["step"] for r in rows] == [1, 2, 3, 4]

  # Re-run: finished members are skipped; only the failing one is retried.
  calls.clear()
  results = sweep.run_sweep(sweep_file, workdir, train_fn=counting_train, log=lambda *_: None)
  assert calls == ["resnet20-seed0"] and results["plain8-seed0"] == "skipped"

  # --shard 1/3 runs only the second member.
  assert list(sweep.run_sweep(sweep_file, str(tmp_path / "shard"), shard="1/3", train_fn=lambda *a: None,
                              log=lambda *_: None)) == ["resnet20-seed0"]
  with pytest.raises(ConfigError, match="i/n"):
    sweep.parse_shard("1-3")


def test_sweep_cli_exit_code_and_report_matches_metrics(tmp_path, sweep_file, capsys):
  workdir = str(tmp_path / "cli")
  assert cli.main(["sweep", "--config", sweep_file, "--workdir", workdir]) == 1  # resnet20 failed
  out = capsys.readouterr()
  assert "1 run(s) failed: resnet20-seed0" in out.err and "| resnet8-seed0 |" in out.out
  for png in ("curves.png", "grad_norms.png", "responses.png"):
    assert os.path.getsize(os.path.join(workdir, png)) > 1000, png

  with open(os.path.join(workdir, "summary.csv")) as f:
    table = {row["run"]: row for row in csv.DictReader(f)}
  assert set(table) == {"resnet8-seed0", "plain8-seed0"}
  for run, row in table.items():
    rows = metrics_log.read_metrics(os.path.join(workdir, run))
    w = max(1, round(0.05 * len(rows)))
    train_err = 100 * (1 - np.mean([r["train/accuracy"] for r in rows[-w:]]))
    evals = [100 * (1 - r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    assert float(row["final_train_error"]) == pytest.approx(train_err)
    assert float(row["final_test_error"]) == pytest.approx(evals[-1])
    assert float(row["best_test_error"]) == pytest.approx(min(evals))
    assert int(row["steps"]) == 4 and int(row["params"]) > 0
  responses = json.load(open(os.path.join(workdir, "responses.json")))
  assert len(responses["resnet8"]) == 6  # 3 blocks x 2 convs


def test_report_groups_seeds_and_quotes_the_paper():
  summaries = [{"run": f"resnet20-seed{s}", "model": "resnet20", "final_train_error": e,
                "final_test_error": e + 1, "paper_test_error": 8.75} for s, e in ((0, 1.0), (1, 3.0))]
  (group,) = report.aggregate(summaries)
  assert group["group"] == "resnet20" and group["runs"] == 2
  assert group["final_test_error_mean"] == 3.0 and group["final_test_error_std"] == pytest.approx(np.sqrt(2))
  with pytest.raises(WorkdirError, match="no runs"):
    report.write_report("configs")


@pytest.mark.parametrize("names", [[f"seed{s}" for s in range(8)],
                                   [f"resnet20-seed{s}" for s in range(8)]])
def test_a_seeds_sweep_is_one_group_with_mean_and_std(names):
  # configs/sweeps/seeds_digits.py names its runs by their seed alone.
  errors = np.arange(8, dtype=float)
  summaries = [{"run": n, "model": "resnet20", "final_train_error": e, "final_test_error": 2 * e,
                "paper_test_error": None} for n, e in zip(names, errors)]
  (group,) = report.aggregate(summaries)
  assert (group["group"], group["runs"]) == ("resnet20", 8)
  assert group["final_test_error_mean"] == pytest.approx(7.0)
  assert group["final_test_error_std"] == pytest.approx(np.std(2 * errors, ddof=1))
  # A grid over another key keeps its groups apart, each over its seeds.
  lr = [{**s, "run": f"learning_rate{lr}-{s['run']}"} for lr in (0.1, 0.2) for s in summaries]
  assert [g["group"] for g in report.aggregate(lr)] == [
      f"learning_rate{lr}{'' if names[0].startswith('seed') else '-resnet20'}" for lr in (0.1, 0.2)]


# He et al. 2015, Table 6 (CIFAR-10 test error %, and parameters), copied here from the paper
# independently of resnet_jax/experiments/report.py. ResNet-110 is the best of 5 runs.
TABLE6 = {"resnet20": (8.75, 0.27e6), "resnet32": (7.51, 0.46e6), "resnet44": (7.17, 0.66e6),
          "resnet56": (6.97, 0.85e6), "resnet110": (6.43, 1.7e6), "resnet1202": (7.93, 19.4e6)}


def test_report_paper_column_is_table6(tmp_path):
  assert report.PAPER_TABLE6 == {k: v[0] for k, v in TABLE6.items()}
  # The parameter counts of our nets match the table's, so the rows compare the same networks.
  from resnet_jax import models  # pylint: disable=g-import-not-at-top
  from resnet_jax.models import flops  # pylint: disable=g-import-not-at-top
  for name in ("resnet20", "resnet56"):
    assert abs(flops.count_params(models.get_model(name), 32) - TABLE6[name][1]) < 0.006e6
  # The summary puts them in the right rows, and only for CIFAR-10 runs.
  for dataset in ("cifar10", "digits"):
    run = tmp_path / dataset / "resnet56"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "resnet56", "dataset": dataset, "seed": 0}))
    (run / metrics_log.METRICS_FILE).write_text(json.dumps(
        {"step": 1, "train/accuracy": 0.5, "eval/accuracy": 0.9}) + "\n")
    row = report.summarize_run(str(run), str(tmp_path / dataset))
    assert row["paper_test_error"] == (6.97 if dataset == "cifar10" else None)
  paper = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                       "PAPER.md")
  if os.path.exists(paper):  # the project's transcription of the paper, beside the checkout
    text = open(paper).read()
    for name, (error, _) in TABLE6.items():
      assert f"ResNet-{name[len('resnet'):]} {error}" in text, name


def test_summary_says_the_best_test_error_is_selected_on_the_test_set():
  text = report.markdown([], [])
  assert "best*" in text and "selected on the test set itself" in text


def test_imagenet_paper_preset_is_the_papers_network_and_testing():
  paper = config_lib.load("configs/imagenet.py:resnet50")
  modern = config_lib.load("configs/imagenet.py:resnet50-modern")
  cifar = config_lib.load("configs/cifar10.py:resnet20")
  # Sec. 3.4 / Table 1: the stride on the bottleneck's first 1x1, and 10-crop testing for Tables 2-4.
  assert (paper.stride_placement, paper.eval_crops, paper.augment) == ("v1", "ten", "scale")
  assert (paper.batch_size, paper.bn_group_size, paper.learning_rate) == (256, 32, 0.1)
  assert (paper.weight_decay, paper.momentum, paper.lr_schedule) == (1e-4, 0.9, "step")
  # The paper's two presets decay the same parameters.
  assert paper.weight_decay_mask == cifar.weight_decay_mask == "all"
  # -modern is torchvision's network with Goyal et al. and Bag of Tricks' changes.
  assert (modern.stride_placement, modern.eval_crops, modern.weight_decay_mask) == (
      "v1.5", "center", "kernels")
  assert (modern.lr_schedule, modern.label_smoothing, modern.zero_init_residual) == ("cosine", 0.1, True)
  # Table 1's multiply-adds for the v1 network (3.8e9), not torchvision's v1.5 (4.1e9).
  from resnet_jax import models  # pylint: disable=g-import-not-at-top
  from resnet_jax.models import flops  # pylint: disable=g-import-not-at-top
  macs = flops.count_macs(models.get_model("resnet50", stride_placement=paper.stride_placement), 224)
  assert round(macs / 1e9, 1) == 3.9 and abs(macs - 3.8e9) / 3.8e9 < 0.02


def _fake_run(root, name, model, seed, steps=40, eval_every=10):
  """A run folder with config.json and metrics.jsonl, as a finished run leaves them."""
  d = root / name
  d.mkdir(parents=True)
  (d / "config.json").write_text(json.dumps({"model": model, "seed": seed, "dataset": "digits"}))
  blocks = ["stem", "stage1_block1", "stage2_block1", "stage3_block1", "head"]
  with open(d / metrics_log.METRICS_FILE, "w") as f:
    for step in range(1, steps + 1):
      row = {"step": step, "train/loss": 2.0 / step, "train/accuracy": min(1.0, step / steps),
             **{f"grad_norm/{b}": 1.0 + i for i, b in enumerate(blocks)}}
      if step % eval_every == 0:
        row.update({"eval/loss": 1.0, "eval/accuracy": 0.5 + seed / 100})
      f.write(json.dumps(row) + "\n")
  return str(d)


def test_figures_draw_every_seed_mark_evaluations_and_name_the_blocks(tmp_path, monkeypatch):
  from resnet_jax.experiments import plots  # pylint: disable=g-import-not-at-top

  dirs = [_fake_run(tmp_path, f"{m}-seed{s}", m, s) for m in ("plain8", "resnet8") for s in (1, 0)]
  runs = plots._load(dirs)  # pylint: disable=protected-access
  assert [(r["family"], r["depth"], [x["config"]["seed"] for x in r["seeds"]]) for r in runs] == [
      ("plain", 8, [0, 1]), ("resnet", 8, [0, 1])]
  figures = {}
  monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(os.path.basename(path), fig))
  plots.plot_curves(runs, "curves.png")
  plots.plot_grad_norms(runs, "grad_norms.png")

  plain, residual = figures["curves.png"].axes
  test_lines = [l for l in plain.get_lines() if l.get_linestyle() == "-"]
  assert len(test_lines) == 2 and all(l.get_marker() == "o" for l in test_lines)  # both seeds, dots
  assert len(test_lines[0].get_xdata()) == 4  # one point per evaluation
  labels = [t.get_text() for t in plain.get_legend().get_texts()]
  assert labels == ["plain-8 (2 seeds) train", "plain-8 (2 seeds) test"]

  panels = [ax for ax in figures["grad_norms.png"].axes if ax.get_title()]
  assert [ax.get_title() for ax in panels] == ["plain-8 (seed 0)", "resnet-8 (seed 0)"]
  assert len(panels[0].get_lines()) == 5  # every block, stem to head
  assert panels[0].get_shared_y_axes().joined(panels[0], panels[1])  # one scale per depth
  bars = [ax for ax in figures["grad_norms.png"].axes if not ax.get_title()]
  assert [t.get_text() for t in bars[0].get_yticklabels()] == ["stem", "stage1", "stage2", "stage3",
                                                               "head"]


def _titles_outside(fig) -> list[str]:
  """The titles (the figure's and each panel's) that reach past the canvas, drawn at its size."""
  fig.canvas.draw()
  renderer, canvas = fig.canvas.get_renderer(), fig.bbox
  texts = [fig._suptitle] + [ax.title for ax in fig.axes]  # pylint: disable=protected-access
  return [t.get_text() for t in texts if t is not None and t.get_text() and not (
      0 <= t.get_window_extent(renderer).x0 and t.get_window_extent(renderer).x1 <= canvas.width
      and t.get_window_extent(renderer).y1 <= canvas.height)]


@pytest.mark.parametrize("models", [("resnet8", "resnet20"), ("plain8", "resnet8")])
def test_figures_have_no_empty_panel_and_titles_that_fit(tmp_path, monkeypatch, models):
  from resnet_jax.experiments import plots  # pylint: disable=g-import-not-at-top

  runs = plots._load([_fake_run(tmp_path, m, m, 0) for m in models])  # pylint: disable=protected-access
  figures = {}
  monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(os.path.basename(path), fig))
  plots.plot_curves(runs, "curves.png")
  plots.plot_grad_norms(runs, "grad_norms.png")
  plots.plot_responses({m: [1.0, 0.5, 0.25] for m in models}, "responses.png")
  panels = [ax.get_title() for ax in figures["grad_norms.png"].axes if ax.get_title()]
  if models[0] == "plain8":  # a pair: plain and residual side by side
    assert panels == ["plain-8 (seed 0)", "resnet-8 (seed 0)"]
  else:  # a residual-only sweep: a panel per net, none for the plain nets it does not have
    assert panels == ["resnet-8 (seed 0)", "resnet-20 (seed 0)"], panels
    assert len(figures["curves.png"].axes) == 1
  for name, fig in figures.items():
    assert not _titles_outside(fig), (name, _titles_outside(fig))


def test_report_of_a_missing_folder_is_one_line_and_exit_2(tmp_path, capsys):
  missing = str(tmp_path / "no" / "such" / "dir")
  assert cli.main(["report", missing]) == 2
  err = capsys.readouterr().err
  assert err == f"resnet-jax report: error: {missing} is not a folder: give a sweep's --workdir, or " \
                "one run's.\n", err
  with pytest.raises(WorkdirError, match="no runs under"):
    report.write_report(str(tmp_path), log=lambda _: None)  # a folder, but no runs in it
