"""The trainer: device-count independence, exact resume, checkpoints, metrics, errors, CLI.

Runs resnet8 (6n+2 with n=1) on the bundled digits so every compile is a few seconds on CPU.
"""

import json
import os
import signal

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_file_loader

from resnet_jax import cli
from resnet_jax import config as config_lib
from resnet_jax import data as data_lib
from resnet_jax.config import default_config
from resnet_jax.run import metrics_log
from resnet_jax.run.errors import ConfigError, NonFiniteError, WorkdirError
from resnet_jax.training import checkpoints, loop
from resnet_jax.training import step as step_lib
from tests.helpers import max_abs_diff, small_config

STEP_KEYS = ["train/loss", "train/accuracy", "train/learning_rate", "train/grad_norm",
             "train/param_norm", "train/update_norm", "grad_norm/stem", "grad_norm/head"] + [
                 f"grad_norm/stage{i}_block1" for i in (1, 2, 3)]


def final_params(workdir, config):
  _, state = loop.restore(workdir, num_devices=config.num_devices)
  return jax.device_get(state.params), int(state.step)


def run_steps(config, steps=3):
  """Params and per-step metrics after `steps` steps, without I/O (the trainer's dispatch)."""
  trainer = loop.Trainer(config)
  state = trainer.strategy.put_state(trainer.init_state())
  losses = []
  for step in range(steps):
    state, metrics = trainer.dispatch(state, step, 1)
    losses.append(float(trainer.strategy.fetch(metrics)["train/loss"]))
  return jax.device_get(trainer.strategy.member_state(state).params), losses


# Random-normal images: the digits' flat background makes exactly equal pre-activations, and whether
# such a tie lands on either side of a ReLU depends on summation order. One tie flipped in step 3
# moved a resnet8 weight by 1e-4 between two compilations (with or without cpu_fusion) that agree to
# 1e-7 on these images.
PARALLEL = {"dataset": "synthetic", "image_size": 8}


@pytest.fixture(scope="module")
def reference():
  """One device, jit: the numbers every other layout must reproduce."""
  return {g: run_steps(small_config(num_devices=1, bn_group_size=g, **PARALLEL)) for g in (0, 16)}


@pytest.mark.parametrize("parallelism,devices,group", [
    ("jit", 8, 0), ("pmap", 8, 0), ("pmap", 1, 0),
    ("jit", 8, 16), ("pmap", 8, 16),  # pmap: 4 examples per device, groups span 4 devices
    ("pmap", 2, 16),                  # pmap: 16 per device, one group each
])
def test_same_parameters_on_any_device_count(reference, parallelism, devices, group):
  params, losses = run_steps(small_config(parallelism=parallelism, num_devices=devices,
                                          bn_group_size=group, **PARALLEL))
  ref_params, ref_losses = reference[group]
  assert max_abs_diff(params, ref_params) <= 1e-5
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)


def test_bn_groups_change_the_numbers(reference):
  # Guards the test above: group statistics must actually differ from whole-batch ones.
  assert max_abs_diff(reference[0][0], reference[16][0]) > 1e-4


def test_batch_is_pure_function_of_seed_and_step():
  ds = data_lib.load_digits()
  a, b = ds.train_batch(3, 47, 32), ds.train_batch(3, 47, 32)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.array_equal(ds.train_batch(4, 47, 32)["label"], a["label"])
  # Consecutive batches of one epoch cover the training set once (global shuffle, no drops).
  n = ds.train_size
  idx = np.concatenate([data_lib.example_indices(0, s, 7, n) for s in range(n // 7 + 1)])
  assert sorted(idx[:n]) == list(range(n))


def test_metrics_every_step_and_exact_resume(tmp_path):
  config = small_config()
  whole = tmp_path / "whole"
  loop.train_and_evaluate(config, str(whole))
  rows = metrics_log.read_metrics(str(whole))
  assert [r["step"] for r in rows] == list(range(1, 7))
  for row in rows:
    assert set(STEP_KEYS) <= set(row), set(STEP_KEYS) - set(row)
  assert "eval/accuracy" in rows[-1] and "perf/images_per_sec" in rows[-1]
  for row in rows[1::2]:  # every log row says how close its steps came to the hardware
    assert 0 < row["perf/peak_share"] < 2 and 0 <= row["perf/input_wait_share"] <= 1, row
    assert row["perf/tflops_per_device"] > 0 and row["perf/step_s"] > 0
  spent = json.load(open(whole / "goodput.json"))
  assert 0 < spent["goodput"] < 1 and spent["compile_s"] > 0 and spent["training_s"] > 0
  assert rows[3]["train/learning_rate"] == pytest.approx(0.1) and rows[4]["train/learning_rate"] == (
      pytest.approx(0.01))
  assert json.load(open(whole / "config.json"))["model"] == "resnet8"
  # What README tells users to run reads them: TensorBoard's own reader (the `tensorboard` extra).
  (events,) = [f for f in os.listdir(whole / "tensorboard") if f.startswith("events.out.tfevents.")]
  scalars = {}
  for e in event_file_loader.EventFileLoader(str(whole / "tensorboard" / events)).Load():
    for value in e.summary.value:
      scalars.setdefault(value.tag, {})[e.step] = value.tensor.float_val[0]
  for tag in ("train/loss", "eval/accuracy", "grad_norm/stem", "perf/elapsed_s", "perf/peak_share"):
    assert tag in scalars, sorted(scalars)
  assert scalars["train/loss"] == pytest.approx({r["step"]: r["train/loss"] for r in rows})

  # Stop after step 3 (not a checkpoint step: 2 is), then resume to 6 with the same command.
  parts = tmp_path / "parts"
  loop.train_and_evaluate(small_config(total_steps=3), str(parts))
  loop.train_and_evaluate(config, str(parts))
  p_whole, s_whole = final_params(str(whole), config)
  p_parts, s_parts = final_params(str(parts), config)
  assert s_whole == s_parts == 6
  assert max_abs_diff(p_whole, p_parts) == 0.0  # bit-identical on CPU
  resumed = metrics_log.read_metrics(str(parts))
  assert [r["step"] for r in resumed] == list(range(1, 7))
  assert [r["train/loss"] for r in resumed] == [r["train/loss"] for r in rows]


def test_sigterm_saves_and_resumes_exactly(tmp_path, monkeypatch):
  config = small_config(checkpoint_every_steps=0)
  real = data_lib.InMemoryDataset.train_batch

  def batch_then_sigterm(self, seed, step, batch_size):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)  # arrives while step 4 is being prepared
    return real(self, seed, step, batch_size)

  monkeypatch.setattr(data_lib.InMemoryDataset, "train_batch", batch_then_sigterm)
  with pytest.raises(loop.StoppedEarly, match="step 4"):
    loop.train_and_evaluate(config, str(tmp_path / "a"))
  assert checkpoints.Checkpointer(str(tmp_path / "a")).latest_step() == 4
  monkeypatch.setattr(data_lib.InMemoryDataset, "train_batch", real)
  loop.train_and_evaluate(config, str(tmp_path / "a"))
  loop.train_and_evaluate(config, str(tmp_path / "b"))
  assert max_abs_diff(final_params(str(tmp_path / "a"), config)[0],
                      final_params(str(tmp_path / "b"), config)[0]) == 0.0


def test_checkpoint_from_8_devices_restores_on_4(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(small_config(num_devices=8, total_steps=2), workdir)
  saved, _ = final_params(workdir, small_config(num_devices=8))
  config4 = small_config(num_devices=4)
  restored, step = final_params(workdir, config4)
  assert step == 2 and max_abs_diff(saved, restored) == 0.0
  loop.train_and_evaluate(config4, workdir)  # and training continues on 4
  single = str(tmp_path / "single")
  loop.train_and_evaluate(small_config(num_devices=1), single)
  assert max_abs_diff(final_params(workdir, config4)[0],
                      final_params(single, small_config(num_devices=1))[0]) <= 1e-5


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  real = data_lib.InMemoryDataset.train_batch

  def poisoned(self, seed, step, batch_size):
    batch = real(self, seed, step, batch_size)
    if step == 2:  # the 3rd step
      batch["image"] = np.full_like(batch["image"], np.nan)
    return batch

  monkeypatch.setattr(data_lib.InMemoryDataset, "train_batch", poisoned)
  workdir = str(tmp_path / "nan")
  with pytest.raises(NonFiniteError, match="at step 3"):
    loop.train_and_evaluate(small_config(), workdir)
  assert checkpoints.Checkpointer(workdir).latest_step() == 2
  assert [r["step"] for r in metrics_log.read_metrics(workdir)] == [1, 2]


def test_eval_counts_every_example_once():
  # 300 test digits, batches of 64 on 8 devices: the last batch has 44 real examples and 20 pads.
  trainer = loop.Trainer(small_config(num_devices=8))
  state = trainer.init_state()
  (result,) = trainer.evaluate(trainer.strategy.put_state(state))
  ds = trainer.dataset
  logits = trainer.model.apply({"params": state.params, "batch_stats": state.batch_stats},
                               ds.test_images, train=False)
  expected = float(np.mean(np.argmax(logits, -1) == ds.test_labels))
  assert result["eval/accuracy"] == pytest.approx(expected, abs=1e-6)
  loss = float(np.mean(step_lib.cross_entropy(logits, ds.test_labels, 10)))
  assert result["eval/loss"] == pytest.approx(loss, rel=1e-5)


def test_config_overrides_and_errors(tmp_path):
  config = config_lib.load("configs/quickstart.py", {"total_steps": "7", "learning_rate": "1",
                                                        "lr_decay_steps": "(3, 5)", "dtype": "bfloat16"})
  assert (config.total_steps, config.learning_rate, config.lr_decay_steps, config.dtype) == (
      7, 1.0, (3, 5), "bfloat16")
  with pytest.raises(ConfigError, match="unknown config key 'totl_steps'"):
    config_lib.load("configs/quickstart.py", {"totl_steps": "7"})
  with pytest.raises(ConfigError, match="total_steps"):
    config_lib.load("configs/quickstart.py", {"total_steps": "'many'"})
  with pytest.raises(ConfigError, match="does not exist"):
    config_lib.load("configs/nope.py")
  with pytest.raises(ConfigError, match="parallelism='pmapp'"):
    loop.Trainer(small_config(parallelism="pmapp"))
  with pytest.raises(ConfigError, match="batch_size=30 must be divisible"):
    loop.Trainer(small_config(batch_size=30, num_devices=8))


def test_config_json_of_an_older_version_gets_new_keys_defaults(tmp_path):
  written = json.loads(small_config(model="plain8", total_steps=9).to_json_best_effort())
  del written["cpu_fusion"]  # a key added after the run was written
  path = tmp_path / "config.json"
  path.write_text(json.dumps(written))
  config = config_lib.from_json(str(path))
  assert (config.model, config.total_steps, config.lr_decay_steps) == ("plain8", 9, (4,))
  assert config.cpu_fusion == default_config().cpu_fusion
  with pytest.raises(AttributeError):
    config.new_key = 1  # still locked


def test_workdir_of_another_model_is_refused_untouched(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(small_config(total_steps=2), workdir)
  before = open(os.path.join(workdir, "config.json")).read()
  with pytest.raises(WorkdirError, match="model: 'resnet8' -> 'plain8'"):
    loop.train_and_evaluate(small_config(model="plain8"), workdir)
  assert open(os.path.join(workdir, "config.json")).read() == before


def test_cli_train_eval_bench(tmp_path, capsys):
  workdir = str(tmp_path / "cli")
  args = ["train", "--config", "configs/quickstart.py", "--workdir", workdir, "--config.model=resnet8",
          "--config.total_steps=4", "--config.batch_size=32", "--config.lr_decay_steps=()"]
  assert cli.main(args) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 4
  assert cli.main(["eval", "--workdir", workdir]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["step"] == 4 and 0 <= result["eval/accuracy"] <= 1
  assert cli.main(args[:5] + ["--config.modle=resnet8"]) == 2
  assert "unknown config key 'modle'" in capsys.readouterr().err
  assert cli.main(["bench", "--model", "resnet8", "--batch-size", "16", "--steps", "2",
                   "--num-devices", "2"]) == 0
  bench = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for key in ("step_ms_median", "images_per_sec", "compile_s", "devices", "flops_per_step",
              "achieved_tflops"):
    assert bench[key] > 0, key
  assert bench["devices"] == 2


def test_block_names_and_label_smoothing():
  assert [step_lib.block_name(k) for k in ("stem_conv", "stem_bn", "stage2_block3", "head", "final_bn",
                                     "stage1_conv2", "stage1_bn2", "fc1")] == [
      "stem", "stem", "stage2_block3", "head", "head", "stage1_layer2", "stage1_layer2", "head"]
  logits = np.array([[2.0, 0.0, -1.0]])
  smoothed = float(step_lib.cross_entropy(logits, np.array([0]), 3, label_smoothing=0.3)[0])
  logp = logits[0] - np.log(np.exp(logits[0]).sum())
  assert smoothed == pytest.approx(-(0.8 * logp[0] + 0.1 * logp[1] + 0.1 * logp[2]), rel=1e-5)
