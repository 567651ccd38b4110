"""Nothing lost, whatever happens: each fault on purpose, and what the run must do about it.

resnet8 on the digits (tests/helpers.small_config), so every run is a few seconds.
"""

import errno
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import pytest

from resnet_jax import cli
from resnet_jax.data import tfds_builder
from resnet_jax.experiments import report, sweep
from resnet_jax.run import errors, metrics_log
from resnet_jax.training import checkpoints, loop, trainer as trainer_lib
from resnet_jax.run import workdir as workdir_lib
from tests.helpers import max_abs_diff, small_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def final_params(workdir):
  _, state = trainer_lib.restore(workdir)
  return jax.device_get(state.params), int(state.step)


def steps_logged(workdir):
  return [r["step"] for r in metrics_log.read_metrics(workdir)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The reference: 6 steps in one go (checkpoints at 2, 4, 6)."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  loop.train_and_evaluate(small_config(num_devices=1), workdir)
  return final_params(workdir)[0]


def _truncate_all(directory):
  for path in glob.glob(os.path.join(directory, "**"), recursive=True):
    if os.path.isfile(path):
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_resumes(tmp_path,
                                                                              uninterrupted):
  workdir = str(tmp_path)
  loop.train_and_evaluate(small_config(num_devices=1, total_steps=4), workdir)
  _truncate_all(os.path.join(workdir, "checkpoints", "4"))  # a crash of the disk mid-write
  with pytest.warns(UserWarning, match=r"step 4 is damaged .* moved it to .*damaged_checkpoints"):
    loop.train_and_evaluate(small_config(num_devices=1), workdir)
  params, step = final_params(workdir)
  assert step == 6 and max_abs_diff(params, uninterrupted) == 0.0
  (aside,) = glob.glob(os.path.join(workdir, "damaged_checkpoints", "4-*"))
  assert os.listdir(aside)  # kept, not deleted
  assert steps_logged(workdir) == [1, 2, 3, 4, 5, 6]


def test_a_checkpoint_of_another_configuration_is_an_error_not_damage(tmp_path):
  workdir = str(tmp_path)
  loop.train_and_evaluate(small_config(num_devices=1, total_steps=2), workdir)
  other = trainer_lib.Trainer(small_config(num_devices=1, model="resnet20"))
  ckpt = checkpoints.Checkpointer(workdir)
  with pytest.raises(checkpoints.IncompatibleCheckpointError, match="another configuration"):
    ckpt.restore_newest_valid(other.abstract_state(), other.strategy.state_sharding)
  ckpt.close()
  assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]


def test_torn_metrics_line_is_kept_aside_and_every_step_logged_once(tmp_path, uninterrupted):
  workdir = str(tmp_path)
  loop.train_and_evaluate(small_config(num_devices=1, total_steps=4), workdir)
  path = os.path.join(workdir, metrics_log.METRICS_FILE)
  with open(path, "a") as f:
    f.write('{"step": 5, "train/lo')  # kill -9 or a full disk in the middle of a write
  assert steps_logged(workdir) == [1, 2, 3, 4]  # readers skip it
  with pytest.warns(UserWarning, match="torn line"):
    loop.train_and_evaluate(small_config(num_devices=1), workdir)
  assert steps_logged(workdir) == [1, 2, 3, 4, 5, 6]
  with open(path + ".torn") as f:
    assert f.read() == '{"step": 5, "train/lo\n'
  assert max_abs_diff(final_params(workdir)[0], uninterrupted) == 0.0


def test_second_writer_is_refused_with_the_holder_named(tmp_path, capsys):
  workdir = str(tmp_path)
  os.makedirs(workdir, exist_ok=True)
  with workdir_lib.Lock(workdir):
    code = cli.main(["train", "--config", "configs/quickstart.py", "--workdir", workdir,
                     "--config.model=resnet8", "--config.total_steps=2"])
  assert code == errors.EXIT_BAD_INPUT
  err = capsys.readouterr().err
  assert f"is in use by pid {os.getpid()}" in err and "another --workdir" in err
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))  # nothing was touched


def test_no_stale_lock_after_kill_9(tmp_path):
  code = ("import sys, time; from resnet_jax.run.workdir import Lock; "
          f"lock = Lock({str(tmp_path)!r}); lock.__enter__(); print('locked', flush=True); "
          "time.sleep(60)")
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                          cwd=REPO_ROOT)
  assert proc.stdout.readline().strip() == "locked"
  with pytest.raises(errors.WorkdirInUseError, match=f"pid {proc.pid}"):
    workdir_lib.Lock(str(tmp_path)).__enter__()
  proc.kill()
  proc.wait()
  with workdir_lib.Lock(str(tmp_path)):  # the kernel released it with the process
    pass


def test_unwritable_workdir_is_refused_before_training(tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  code = cli.main(["train", "--config", "configs/quickstart.py", "--workdir", str(blocker / "run"),
                   "--config.model=resnet8", "--config.total_steps=2"])
  assert code == errors.EXIT_BAD_INPUT
  err = capsys.readouterr().err
  assert "cannot write to the workdir" in err and "Traceback" not in err


def test_full_disk_names_the_path_and_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
  workdir = str(tmp_path / "run")
  real_save = checkpoints.Checkpointer.save

  def save(self, step, state, force=False):
    if step == 4:
      raise OSError(errno.ENOSPC, "No space left on device", os.path.join(self.directory, "4"))
    return real_save(self, step, state, force)

  monkeypatch.setattr(checkpoints.Checkpointer, "save", save)
  code = cli.main(["train", "--config", "configs/quickstart.py", "--workdir", workdir,
                   "--config.model=resnet8", "--config.total_steps=6",
                   "--config.checkpoint_every_steps=2", "--config.num_devices=1"])
  assert code == errors.EXIT_IO_ERROR == 74
  err = capsys.readouterr().err
  assert "is full" in err and "MiB free" in err and "last good checkpoint is step 2" in err
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]


@pytest.mark.parametrize("upload_lost", [True, False])
def test_a_save_that_fails_transiently_in_the_background_is_exit_75(tmp_path, monkeypatch, capsys,
                                                                    upload_lost):
  """Orbax retries none of its uploads: a resumable upload the server forgot (a 404 on its
  upload_id, which GCS's docs answer with a new upload) surfaces from the next save as an error.
  It ends the run with exit 75 (restart me) and the last committed checkpoint; a plain missing
  file (the control) is no transient fault and keeps its traceback."""
  workdir = str(tmp_path / "run")
  real_save = checkpoints.Checkpointer.save
  url = "http://127.0.0.1:1/upload/storage/v1/b/bucket/o?uploadType=resumable&name=run%2F4"

  def save(self, step, state, force=False):
    if step == 4:
      raise FileNotFoundError(url + ("&upload_id=0123abcd" if upload_lost else ""))
    return real_save(self, step, state, force)

  monkeypatch.setattr(checkpoints.Checkpointer, "save", save)
  args = ["train", "--config", "configs/quickstart.py", "--workdir", workdir,
          "--config.model=resnet8", "--config.total_steps=6", "--config.checkpoint_every_steps=2",
          "--config.num_devices=1"]
  if upload_lost:
    assert cli.main(args) == errors.EXIT_STORAGE_UNAVAILABLE == 75
    err = capsys.readouterr().err
    assert "transient storage error" in err and "last committed checkpoint is step 2" in err
  else:  # not a fault a retry cures: it keeps its traceback
    with pytest.raises(FileNotFoundError, match="uploadType=resumable&name=run%2F4$"):
      cli.main(args)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]


def test_ctrl_c_saves_and_resumes_exactly_a_second_one_aborts(tmp_path, monkeypatch, capsys,
                                                              uninterrupted):
  workdir = str(tmp_path)
  config = small_config(num_devices=1)
  real = type(trainer_lib.Trainer(config).dataset).train_batch

  def batch_then_ctrl_c(self, seed, step, batch_size):
    if step == 2:  # during the third step
      signal.raise_signal(signal.SIGINT)
    return real(self, seed, step, batch_size)

  monkeypatch.setattr(type(trainer_lib.Trainer(config).dataset), "train_batch", batch_then_ctrl_c)
  # The handler the run found, not necessarily Python's default: a shell starts background jobs
  # (`pytest &`) with SIGINT ignored.
  before = signal.getsignal(signal.SIGINT)
  with pytest.raises(errors.StoppedEarly, match="by Ctrl-C at step 3"):
    loop.train_and_evaluate(config, workdir)
  assert "Ctrl-C: finishing the current step" in capsys.readouterr().err
  assert signal.getsignal(signal.SIGINT) is before  # handler restored
  monkeypatch.undo()
  loop.train_and_evaluate(config, workdir)
  assert max_abs_diff(final_params(workdir)[0], uninterrupted) == 0.0

  def batch_then_two_ctrl_c(self, seed, step, batch_size):
    if step == 1:
      signal.raise_signal(signal.SIGINT)
      signal.raise_signal(signal.SIGINT)
    return real(self, seed, step, batch_size)

  monkeypatch.setattr(type(trainer_lib.Trainer(config).dataset), "train_batch",
                      batch_then_two_ctrl_c)
  aborted = str(tmp_path / "aborted")
  code = cli.main(["train", "--config", "configs/quickstart.py", "--workdir", aborted,
                   "--config.model=resnet8", "--config.total_steps=6", "--config.num_devices=1",
                   "--config.batch_size=32", "--config.lr_decay_steps=(4,)"])
  assert code == errors.EXIT_ABORTED == 130
  assert "stopped at once by a second Ctrl-C" in capsys.readouterr().err


@pytest.mark.parametrize("text, where", [
    ("def get_config(:\n  pass\n", "line 1"),
    ("from resnet_jax.config import default_config\n\ndef get_config():\n  c = default_config()\n"
     "  c.total_steps = int('2k')\n  return c\n", "line 5"),
    ("import missing_module_x\n", "line 1: ModuleNotFoundError"),
    # Unlocked, a config accepts a misspelt key as a new one: the loader must not.
    ("from resnet_jax.config import default_config\n\ndef get_config():\n  c = default_config()\n"
     "  c.modle = 'resnet8'\n  return c\n", "'modle'; did you mean 'model'"),
])
def test_config_file_errors_name_the_file_and_line(tmp_path, capsys, text, where):
  path = tmp_path / "broken.py"
  path.write_text(text)
  code = cli.main(["train", "--config", str(path), "--workdir", str(tmp_path / "run")])
  assert code == errors.EXIT_BAD_INPUT
  err = capsys.readouterr().err
  assert str(path) in err and where in err and "Traceback" not in err


def test_unknown_key_suggests_the_closest(capsys):
  code = cli.main(["train", "--config", "configs/quickstart.py", "--workdir", "unused",
                   "--config.learning_rat=0.1"])
  assert code == errors.EXIT_BAD_INPUT
  assert "did you mean 'learning_rate'" in capsys.readouterr().err


def test_missing_dataset_offline_fails_in_seconds_and_leaves_nothing(tmp_path, monkeypatch, capsys):
  def no_network(*args, **kwargs):
    raise OSError(errno.ENETUNREACH, "Network is unreachable")

  monkeypatch.setattr(tfds_builder.socket, "create_connection", no_network)
  for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
    monkeypatch.delenv(proxy, raising=False)
  data_dir = tmp_path / "nonexistent" / "tfds"
  start = time.monotonic()
  code = cli.main(["train", "--config", "configs/cifar10.py:resnet8", "--workdir",
                   str(tmp_path / "run"), f"--config.data_dir={data_dir}", "--config.num_devices=1"])
  assert code == errors.EXIT_BAD_INPUT and time.monotonic() - start < 60
  err = capsys.readouterr().err
  assert "no network" in err and "resnet-jax prepare cifar10 --source" in err
  assert not (tmp_path / "nonexistent").exists() and not (tmp_path / "run").exists()


def test_resume_refuses_keys_that_change_the_run_and_keeps_every_segment(tmp_path):
  workdir = str(tmp_path)
  loop.train_and_evaluate(small_config(num_devices=1, total_steps=2), workdir)
  for key, value in [("seed", 1), ("batch_size", 16), ("augment", "cifar"),
                     ("validation_split", 100), ("normalization", "per_pixel_mean"),
                     ("data_on_device", True), ("learning_rate", 0.2)]:
    with pytest.raises(errors.WorkdirError, match=f"different {key}: "):
      loop.train_and_evaluate(small_config(num_devices=1, total_steps=4, **{key: value}), workdir)
  # Where the host looks and how often may change.
  loop.train_and_evaluate(small_config(num_devices=1, total_steps=4, log_every_steps=1,
                                       eval_every_steps=4), workdir)
  with open(os.path.join(workdir, workdir_lib.HISTORY_FILE)) as f:
    history = [json.loads(line) for line in f]
  assert [h["start_step"] for h in history] == [0, 2]
  assert [h["config"]["log_every_steps"] for h in history] == [2, 1]


def test_cosine_runs_cannot_change_their_length_on_resume(tmp_path):
  workdir = str(tmp_path)
  loop.train_and_evaluate(small_config(num_devices=1, total_steps=2, lr_schedule="cosine",
                                       lr_decay_steps=()), workdir)
  with pytest.raises(errors.WorkdirError, match="total_steps: 2 -> 4"):
    loop.train_and_evaluate(small_config(num_devices=1, total_steps=4, lr_schedule="cosine",
                                         lr_decay_steps=()), workdir)


def test_overriding_a_grid_key_is_an_error(capsys):
  code = cli.main(["sweep", "--config", "configs/sweeps/degradation_digits.py", "--workdir",
                   "unused", "--config.model=resnet20"])
  assert code == errors.EXIT_BAD_INPUT
  assert "overrides a key the sweep's grid sets (model" in capsys.readouterr().err


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
  """gs:// paths served from a local folder through fsspec, as epath serves them from GCS."""
  import fsspec  # pylint: disable=g-import-not-at-top
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  from fsspec.implementations.local import LocalFileSystem  # pylint: disable=g-import-not-at-top

  root = str(tmp_path / "bucket_storage")
  os.makedirs(root)

  class FakeGcs(LocalFileSystem):
    protocol = ("gs", "gcs")

    @classmethod
    def _strip_protocol(cls, path):
      path = str(path)
      path = path[len("gs://"):] if path.startswith("gs://") else path
      return path if path.startswith(root) else os.path.join(root, path.lstrip("/"))

  from etils.epath import backend  # pylint: disable=g-import-not-at-top

  registry = sys.modules["fsspec.registry"]._registry  # pylint: disable=protected-access
  saved = {p: registry.get(p) for p in ("gs", "gcs")}
  for protocol in ("gs", "gcs"):
    fsspec.register_implementation(protocol, FakeGcs, clobber=True)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # epath's fsspec backend for gs://
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  yield root
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  for protocol, cls in saved.items():
    if cls is None:
      registry.pop(protocol, None)
    else:
      registry[protocol] = cls


def test_sweep_status_and_report_work_on_a_bucket_workdir(fake_bucket):
  def fake_train(config, run_dir):
    """What training leaves for sweeps and reports, written through epath like the loop does."""
    if config.model == "plain56":
      raise RuntimeError("this member fails")
    from etils import epath  # pylint: disable=g-import-not-at-top
    root = epath.Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(config.to_json_best_effort())
    rows = [{"step": s, "train/loss": 1.0, "train/accuracy": 0.5, "perf/elapsed_s": 1.5 * s,
             **({"eval/accuracy": 0.6, "eval/loss": 1.0} if s == config.total_steps else {})}
            for s in range(1, config.total_steps + 1)]
    (root / metrics_log.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))

  workdir = "gs://bucket/sweep"
  results = sweep.run_sweep("configs/sweeps/degradation_digits.py", workdir, train_fn=fake_train,
                            log=lambda text: None)
  assert results == {"plain20": "done", "plain56": "failed", "resnet20": "done", "resnet56": "done"}
  assert sweep.read_status(f"{workdir}/plain56")["error"] == "RuntimeError: this member fails"
  assert sweep.read_status(f"{workdir}/resnet20")["wall_time_s"] == 300.0
  assert sweep.is_finished(f"{workdir}/resnet20", small_config(total_steps=200))
  rows = report.write_report(workdir, plots=True, responses=False, log=lambda text: None)
  assert [r["run"] for r in rows] == ["plain20", "resnet20", "resnet56"]
  stored = os.path.join(fake_bucket, "bucket", "sweep")
  assert {"summary.csv", "summary.md", "curves.png"} <= set(os.listdir(stored))
  assert not os.path.exists("gs:")  # nothing went to a local ./gs:/ folder
  # A re-run skips what is done and retries only the failed member.
  again = sweep.run_sweep("configs/sweeps/degradation_digits.py", workdir, train_fn=fake_train,
                          log=lambda text: None)
  assert again["resnet20"] == "skipped" and again["plain56"] == "failed"


def test_evaluate_checkpoint_closes_the_checkpointer_when_evaluation_raises(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  loop.train_and_evaluate(small_config(num_devices=1, total_steps=2), workdir)
  closed = []
  real_close = checkpoints.Checkpointer.close
  monkeypatch.setattr(checkpoints.Checkpointer, "close",
                      lambda self: closed.append(True) or real_close(self))
  monkeypatch.setattr(trainer_lib.Trainer, "evaluate",
                      lambda self, state: (_ for _ in ()).throw(RuntimeError("eval broke")))
  with pytest.raises(RuntimeError, match="eval broke"):
    loop.evaluate_checkpoint(workdir)
  assert closed == [True]


def _train_cmd(workdir, steps):
  return [sys.executable, "-m", "resnet_jax.cli", "train", "--config", "configs/quickstart.py",
          "--workdir", workdir, "--config.model=resnet8", f"--config.total_steps={steps}",
          "--config.batch_size=32", "--config.lr_decay_steps=(12,)", "--config.num_devices=1",
          "--config.checkpoint_every_steps=1", "--config.log_every_steps=1",
          "--config.eval_every_steps=0", "--config.keep_checkpoints=2"]


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_kill_9_at_random_points_three_times_then_bit_identical(tmp_path):
  """Frequent asynchronous saves, killed outright at random moments; the re-runs lose nothing."""
  steps = 24
  env = {**os.environ, "RESNET_JAX_HUGEPAGES": "0", "JAX_PLATFORMS": "cpu"}
  reference = str(tmp_path / "reference")
  subprocess.run(_train_cmd(reference, steps), cwd=REPO_ROOT, env=env, check=True,
                 capture_output=True)
  workdir = str(tmp_path / "killed")
  rng = random.Random(0)
  kills = 0
  while kills < 3:
    proc = subprocess.Popen(_train_cmd(workdir, steps), cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Wait until this segment has trained 1-3 steps, then a random moment within the next step or
    # save. Counted in steps, not seconds: with a warm compilation cache a whole run can take less
    # than a fixed wait, and it would finish before the kills.
    target = len(steps_logged(workdir)) + rng.randint(1, 3)
    deadline = time.monotonic() + 240
    while len(steps_logged(workdir)) < target and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.25))
    if proc.poll() is not None:
      break  # it finished before the kill: fine, the final check still holds
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills += 1
  subprocess.run(_train_cmd(workdir, steps), cwd=REPO_ROOT, env=env, check=True,
                 capture_output=True)
  assert kills >= 2, "the run finished too fast to be killed; slow it down"
  assert max_abs_diff(final_params(workdir)[0], final_params(reference)[0]) == 0.0
  assert steps_logged(workdir) == list(range(1, steps + 1))


def test_an_unwritable_workdir_is_named_with_its_reason(tmp_path):
  """Each reason a workdir cannot be written, in the words the error gives the user."""
  why = workdir_lib._why_not  # pylint: disable=protected-access
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  assert why(str(blocker), OSError(errno.EEXIST, "exists")) == "it is a file, not a folder"
  assert why(str(blocker / "run"), OSError(errno.ENOTDIR, "x")) == f"{blocker} is a file, not a folder"
  run = str(tmp_path / "run")
  assert why(run, OSError(errno.ENOSPC, "x")) == f"no space left on the disk holding {tmp_path}"
  assert why(run, OSError(errno.EROFS, "x")) == f"{tmp_path} is on a read-only file system"
  assert why(run, OSError(errno.EACCES, "x")) == (
      f"{tmp_path} is read-only for this user (no permission to write there)")
  assert why(run, OSError(errno.EINVAL, "x")) == (
      f"{run} does not exist, and {tmp_path} does not accept new folders")
