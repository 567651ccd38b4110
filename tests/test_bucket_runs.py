"""Runs with a gs:// workdir end to end, through a GCS JSON API on loopback (tests/gcs.py): the
`resnet-jax` command in subprocesses, killed, faulted and resumed; sweeps, reports, eval; a gs://
data_dir. ResNet-8 on the digits, a checkpoint every step; each test is tens of seconds.
"""

import json
import os
import signal
import subprocess
import sys
import time

from etils import epath
import jax
import pytest

from resnet_jax.run import metrics_log, storage
from resnet_jax.training import trainer as trainer_lib
from tests import gcs
from tests.helpers import load_script, max_abs_diff

pytestmark = pytest.mark.e2e
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
  return _params(workdir)[0]


def _wait_for_steps(proc, workdir, n, timeout_s=240):
  deadline = time.monotonic() + timeout_s
  while len(_steps_logged(workdir)) < n and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)


def test_train_in_a_bucket_killed_and_resumed_is_bit_identical(gcs_env, reference, tmp_path):
  workdir = f"gs://{gcs.BUCKET}/{tmp_path.name}/killed"
  proc = subprocess.Popen(soak_lib.train_command(workdir, STEPS), cwd=REPO_ROOT, env=_env(gcs_env[
      "STORAGE_EMULATOR_HOST"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for_steps(proc, workdir, 3)
  assert proc.poll() is None, "the run finished before the kill; slow it down"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = subprocess.run(soak_lib.train_command(workdir, STEPS), cwd=REPO_ROOT,
                        env=_env(gcs_env["STORAGE_EMULATOR_HOST"]), capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"{workdir} is read and written through gcsfs" in done.stderr
  params, step = _params(workdir)
  assert step == STEPS and max_abs_diff(params, reference) == 0.0
  assert _steps_logged(workdir) == list(range(1, STEPS + 1))
  starts = [json.loads(line)["start_step"] for line in
            storage.read_text(f"{workdir}/config_history.jsonl").splitlines()]
  assert starts[0] == 0 and 1 <= starts[1] < STEPS  # it did resume, from a checkpoint in the bucket


def test_faults_and_a_10_s_outage_mid_run_end_bit_identical(reference, tmp_path, monkeypatch):
  """503s, 429s, resets and 2 s stalls on 3% of requests, and the server stopped for 10 s."""
  server = gcs.Server(str(tmp_path / "gcs")).start()  # its own: stopping the session's would
  # Each fault costs gcsfs or tensorstore a second or two of backoff, and a checkpoint is ~150
  # requests: 3% keeps this test near a minute.
  proxy = gcs.FaultProxy(server.url, fraction=0.03, stall_s=2.0, max_faults=30, seed=3).start()
  gcs.point_at(server.url, monkeypatch)
  workdir = f"gs://{gcs.BUCKET}/faults"
  try:
    proc = subprocess.Popen(soak_lib.train_command(workdir, STEPS), cwd=REPO_ROOT,
                            env=_env(proxy.url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    _wait_for_steps(proc, workdir, 3)
    assert proc.poll() is None, "the run finished before the outage; slow it down"
    server.stop()
    time.sleep(10)
    server.start()
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
  finally:
    proxy.stop()
  assert sum(proxy.counts.values()) >= 5, proxy.counts
  params, step = _params(workdir)
  assert step == STEPS and max_abs_diff(params, reference) == 0.0
  assert _steps_logged(workdir) == list(range(1, STEPS + 1))
  server.stop()


@pytest.mark.timeout(600)
def test_soak_kill_9_sigterm_and_the_bucket_going_away_bit_identical(tmp_path, monkeypatch):
  """benchmarks/soak.py at a size for this tier (the longer run: docs/results/faults)."""
  figures = soak_lib.soak(str(tmp_path), lambda url: gcs.point_at(url, monkeypatch), steps=STEPS,
                          interruptions=4, fault_fraction=0.01, stall_s=1.0, outage_s=4.0, seed=1,
                          log=lambda text: None)
  assert sum(figures["interruptions"].values()) >= 3, figures
  assert figures["max_abs_param_diff"] == 0.0 and figures["batch_stats_equal"], figures
  assert figures["steps_logged_once"] and figures["final_step"] == STEPS, figures
  assert figures["steps_recomputed"] >= 0, figures


SWEEP = """
from resnet_jax.config import default_config

def get_config():
  c = default_config()
  c.update(dataset="digits", batch_size=16, eval_batch_size=100, total_steps=4, lr_decay_steps=(),
           log_every_steps=2, eval_every_steps=2, checkpoint_every_steps=2, num_devices=1)
  return c

def get_grid():
  return {"model": ["resnet8", "plain8"]}
"""


def test_sweep_report_and_eval_in_a_bucket(gcs_env, tmp_path):
  sweep_file = tmp_path / "tiny_sweep.py"
  sweep_file.write_text(SWEEP)
  root = f"gs://{gcs.BUCKET}/{tmp_path.name}/sweep"
  env = _env(gcs_env["STORAGE_EMULATOR_HOST"])

  def command(*args):
    done = subprocess.run([sys.executable, "-m", "resnet_jax.cli", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout

  assert "| resnet8 |" in command("sweep", "--config", str(sweep_file), "--workdir", root)
  names = {p.name for p in epath.Path(root).iterdir()}
  assert {"resnet8", "plain8", "summary.csv", "summary.md", "curves.png"} <= names
  storage.write_atomic(f"{root}/summary.md", "stale")
  assert "| plain8 |" in command("report", "--workdir", root, "--no-plots")
  assert storage.read_text(f"{root}/summary.md") != "stale"
  result = json.loads(command("eval", "--workdir", f"{root}/resnet8").strip().splitlines()[-1])
  logged = [r for r in metrics_log.read_metrics(f"{root}/resnet8") if "eval/accuracy" in r][-1]
  assert logged["step"] == 4 and result["eval/accuracy"] == pytest.approx(logged["eval/accuracy"])


def test_cifar10_from_a_gs_data_dir_is_mirrored_and_trains(gcs_env, cifar10_data_dir, tmp_path):
  import gcsfs  # pylint: disable=g-import-not-at-top

  data_dir = f"gs://{gcs.BUCKET}/{tmp_path.name}/tensorflow_datasets"
  gcsfs.GCSFileSystem().put(cifar10_data_dir, data_dir, recursive=True)
  cache = tmp_path / "cache"
  done = subprocess.run(
      [sys.executable, "-m", "resnet_jax.cli", "train", "--config", "configs/quickstart.py",
       "--workdir", f"gs://{gcs.BUCKET}/{tmp_path.name}/run", "--config.dataset=cifar10",
       f"--config.data_dir={data_dir}", f"--config.data_cache_dir={cache}",
       "--config.model=resnet8", "--config.total_steps=2", "--config.batch_size=32",
       "--config.num_devices=1", "--config.eval_every_steps=0", "--config.lr_decay_steps=()",
       "--config.log_every_steps=1"],
      cwd=REPO_ROOT, env=_env(gcs_env["STORAGE_EMULATOR_HOST"]), capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  mirrored = [os.path.join(d, f) for d, _, files in os.walk(cache) for f in files]
  assert any("array_record" in f for f in mirrored), mirrored
  assert _steps_logged(f"gs://{gcs.BUCKET}/{tmp_path.name}/run") == [1, 2]
