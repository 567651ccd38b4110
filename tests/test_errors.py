"""Errors by kind: a user's mistake is one sentence and exit 2, anything else a bug with its traceback.

JAX raises ValueError for its own shape and sharding failures, so the class alone decides nothing:
an internal ValueError from inside the step must reach the user as a traceback, not as "bad input".
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from resnet_jax import cli
from resnet_jax import config as config_lib
from resnet_jax import data as data_lib
from resnet_jax import models
from resnet_jax.config import defaults
from resnet_jax.run import errors, extras
from resnet_jax.training import parallel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model=resnet8", "--config.total_steps=2", "--config.lr_decay_steps=()",
        "--config.num_devices=1", "--config.batch_size=32", "--config.eval_every_steps=0",
        "--config.checkpoint_every_steps=0", "--config.log_every_steps=1"]


def _train(workdir, *more):
  return cli.main(["train", "--config", "configs/quickstart.py", "--workdir", str(workdir), *TINY, *more])


def test_an_internal_value_error_inside_the_step_is_a_bug_with_its_traceback(tmp_path, monkeypatch):
  def broken_step(state, batch, **kwargs):
    raise ValueError("an internal shape bug")  # as JAX raises for its own failures
  monkeypatch.setattr(parallel, "train_step", broken_step)
  with pytest.raises(ValueError, match="an internal shape bug"):  # not swallowed into exit 2
    _train(tmp_path / "run")


def test_a_shape_failure_jax_raises_is_not_reported_as_bad_input(tmp_path, monkeypatch):
  real = data_lib.InMemoryDataset.train_batch

  def wrong_shape(self, seed, step, batch_size):
    batch = real(self, seed, step, batch_size)
    return {**batch, "label": batch["label"][:16]}  # a bug of ours: half the labels of the images
  monkeypatch.setattr(data_lib.InMemoryDataset, "train_batch", wrong_shape)
  with pytest.raises(Exception) as info:
    _train(tmp_path / "run")
  assert not isinstance(info.value, errors.UserError)
  assert errors.exit_code(info.value) is None


@pytest.mark.parametrize("error", [
    errors.ConfigError("c"), errors.WorkdirError("w"), errors.WorkdirInUseError("u"),
    errors.IncompatibleCheckpointError("i"), errors.DataError("d"), errors.WeightsError("x"),
    errors.MissingExtraError("m"), errors.LaunchError("l")])
def test_every_user_error_is_exit_2_and_no_builtin_class_a_bug_could_raise(error):
  assert errors.exit_code(error) == errors.EXIT_BAD_INPUT
  # `except ValueError` (or RuntimeError, ImportError) must never take a user's mistake for a bug's
  # kind, nor a bug for a user's mistake: the classes do not overlap.
  assert not isinstance(error, (ValueError, RuntimeError, ImportError, OSError))
  assert errors.exit_code(ValueError("jax")) is None and errors.exit_code(RuntimeError()) is None


def test_a_user_error_is_one_sentence_without_a_traceback(tmp_path, capsys):
  assert _train(tmp_path / "run", "--config.bn_group_size=5") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("resnet-jax train: error: bn_group_size=5 does not divide")
  assert not any("Traceback" in line for line in err)
  assert not (tmp_path / "run").exists()  # checked before anything was made


def test_the_command_line_prints_a_bug_with_its_traceback_and_exits_1(tmp_path):
  # A config file whose get_config returns a config the trainer then trips over in our own code
  # cannot be written without a bug; a broken install stands in: a module of ours that fails.
  code = ("import sys; import resnet_jax.training.parallel as p\n"
          "def boom(*a, **k): raise ValueError('an internal bug')\n"
          "p.train_step = boom\n"
          "from resnet_jax import cli\n"
          f"sys.exit(cli.main(['train', '--config', 'configs/quickstart.py', '--workdir', "
          f"{str(tmp_path / 'run')!r}] + {TINY!r}))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
  assert proc.returncode == 1
  assert "Traceback (most recent call last)" in proc.stderr and "an internal bug" in proc.stderr
  assert "resnet-jax train: error" not in proc.stderr


def test_missing_extras_are_all_named_in_one_line_before_anything_runs(monkeypatch, capsys, tmp_path):
  absent = {"matplotlib", "optax", "orbax.checkpoint"}
  real = extras.missing
  monkeypatch.setattr(extras, "missing", lambda modules: [m for m in real(modules)] + [
      m for m in modules if m in absent])
  assert cli.main(["sweep", "--config", "configs/sweeps/degradation_digits.py", "--workdir",
                   str(tmp_path / "sweep")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert "optax (train)" in err[0] and "orbax.checkpoint (train)" in err[0]
  assert "matplotlib (report)" in err[0]
  assert "pip install 'resnet-jax[report]'" in err[0]  # report includes train: one extra to install
  assert not (tmp_path / "sweep").exists()  # nothing trained, nothing made
  # A sweep without plots needs no matplotlib; prepare needs TensorFlow on top of train.
  assert cli.main(["sweep", "--config", "configs/sweeps/degradation_digits.py", "--workdir",
                   str(tmp_path / "sweep"), "--no-plots", "--shard", "x"]) == 2
  assert "matplotlib" not in capsys.readouterr().err


def test_the_install_line_covers_every_missing_extra(monkeypatch):
  monkeypatch.setattr(extras, "missing", lambda modules: list(modules))
  with pytest.raises(errors.MissingExtraError, match=r"pip install 'resnet-jax\[data,torch\]'$"):
    extras.require("x", ["tensorflow", "torch", "optax"])  # data and torch both include train
  extras.require("models", [])  # nothing needed, nothing raised


def test_config_file_argument_errors_name_the_file_and_what_it_takes(capsys):
  assert cli.main(["train", "--config", "configs/quickstart.py:bad", "--workdir", "unused"]) == 2
  err = capsys.readouterr().err
  assert "configs/quickstart.py takes no argument" in err and "TypeError" not in err
  assert cli.main(["train", "--config", "configs/cifar10.py:resnet21", "--workdir", "unused"]) == 2
  err = capsys.readouterr().err
  assert "cifar10.py" in err and "expected a CIFAR net such as resnet56" in err
  assert not os.path.exists("unused")


def _internal_bug(*args, **kwargs):
  raise ValueError("an internal bug")  # the class a preset's own refusal raises too


def test_a_config_files_own_error_is_a_config_error(tmp_path):
  own = tmp_path / "own.py"
  own.write_text("def get_config(arg):\n  raise ValueError(f'{arg}: not one of my variants')\n")
  with pytest.raises(errors.ConfigError, match="own.py, line 2: x: not one of my variants"):
    config_lib.load_config_file(f"{own}:x")
  at_import = tmp_path / "at_import.py"
  at_import.write_text("import json\nSTEPS = json.loads('{not json')\n")  # a library call it made
  with pytest.raises(errors.ConfigError, match="at_import.py, line 2: JSONDecodeError"):
    config_lib.load_module(str(at_import))
  # A user's mistake our code finds for the file (a misspelt key) keeps its own message.
  via_ours = tmp_path / "via_ours.py"
  via_ours.write_text("from resnet_jax import config\ndef get_config():\n  c = config.default_config()\n"
                      "  config.apply_overrides(c, {'totl_steps': '1'})\n  return c\n")
  with pytest.raises(errors.ConfigError, match="via_ours.py, line 4: unknown config key 'totl_steps'"):
    config_lib.load_config_file(str(via_ours))


def test_a_bug_in_project_code_a_config_file_calls_keeps_its_traceback(tmp_path, monkeypatch, capsys):
  # configs/cifar10.py calls default_config(); a bug inside it is ours, not the preset's.
  monkeypatch.setattr(defaults, "_schedule", _internal_bug)
  with pytest.raises(ValueError, match="an internal bug") as info:
    config_lib.load_config_file("configs/cifar10.py:resnet20")
  assert not isinstance(info.value, errors.UserError)
  assert "defaults.py" in info.traceback[-2].path.name  # the frame that called the broken code
  with pytest.raises(ValueError, match="an internal bug"):  # the command too: no "error:" line
    cli.main(["train", "--config", "configs/cifar10.py:resnet20", "--workdir", str(tmp_path / "r")])
  assert "error:" not in capsys.readouterr().err and not (tmp_path / "r").exists()
  at_import = tmp_path / "at_import.py"  # the same bug met while the file is imported
  at_import.write_text("from resnet_jax.config import default_config\nBASE = default_config()\n")
  with pytest.raises(ValueError, match="an internal bug"):
    config_lib.load_module(str(at_import))


def _not_found(name):
  def fail(*args, **kwargs):
    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
  return fail


def test_a_module_not_found_is_a_missing_extra_only_when_its_package_is_not_installed(monkeypatch,
                                                                                     capsys):
  # optax (the train extra) is installed here: a module it lacks is a broken install or a bug.
  for name in ("optax", "optax.no_such_module"):
    monkeypatch.setattr(models, "list_models", _not_found(name))
    with pytest.raises(ModuleNotFoundError):
      cli.main(["models", "resnet8"])
    assert "error:" not in capsys.readouterr().err
  # matplotlib made absent (found by no import system): the extra that installs it is named.
  monkeypatch.setattr(models, "list_models", _not_found("matplotlib.pyplot"))
  real = extras.missing
  monkeypatch.setattr(extras, "missing", lambda modules: [m for m in real(modules)] + [
      m for m in modules if m == "matplotlib"])
  assert cli.main(["models", "resnet8"]) == errors.EXIT_BAD_INPUT
  assert capsys.readouterr().err.strip().endswith("pip install 'resnet-jax[report]'")
  assert extras.missing_extra("numpy") is None  # not an extra's package at all


def test_a_failed_prepare_leaves_nothing_behind(tmp_path, cifar10_source, capsys):
  src = tmp_path / "src"
  src.mkdir()
  for name in os.listdir(cifar10_source):
    if name != "data_batch_3.bin.gz":  # one file missing: found after the data_dir was named
      os.symlink(os.path.join(cifar10_source, name), src / name)
  data_dir = tmp_path / "new" / "tfds"
  assert cli.main(["prepare", "cifar10", "--source", str(src), "--data-dir", str(data_dir)]) == 2
  assert "missing data_batch_3.bin" in capsys.readouterr().err
  assert not (tmp_path / "new").exists()
  existing = tmp_path / "kept"
  (existing / "other_dataset").mkdir(parents=True)
  assert cli.main(["prepare", "cifar10", "--source", str(src), "--data-dir", str(existing)]) == 2
  assert os.listdir(existing) == ["other_dataset"]  # what was there stays; nothing was added
  assert np.all([os.path.exists(src / n) for n in os.listdir(src)])


def test_no_library_warning_before_our_error_for_a_folder_without_the_dataset(tmp_path, caplog):
  from resnet_jax.data import tfds_builder  # pylint: disable=g-import-not-at-top

  (tmp_path / "imagenet2012" / "5.1.0").mkdir(parents=True)  # a variant folder without its files
  caplog.set_level("DEBUG")
  with pytest.raises(tfds_builder.DataUnavailableError, match="imagenet2012 is not prepared in"):
    tfds_builder.open_builder("imagenet2012", str(tmp_path), download=False)
  assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")], caplog.text
