"""Which launch a process belongs to (`distributed.detect`), and the metrics log of a gs:// workdir."""

import json

import pytest

from resnet_jax import storage
from resnet_jax.training import distributed, metrics_log


@pytest.mark.parametrize("env,kind", [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}, "env"),
    # An sbatch shell, or srun with one task, is a single process.
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "8"}, "slurm"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "1"}, None),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "mpi"),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
])
def test_detect(env, kind):
  assert distributed.detect(env) == kind


def test_bad_process_variables_are_errors_naming_them(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  monkeypatch.setenv("JAX_PROCESS_ID", "0")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' must be an integer"):
    distributed.initialize()
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  with pytest.raises(ValueError, match=r"JAX_PROCESS_ID=2 must be in \[0, JAX_NUM_PROCESSES=2\)"):
    distributed.initialize()


def test_remote_metrics_log_uploads_whole_file_at_flush_and_close(tmp_path, monkeypatch):
  # A gs:// object cannot be appended to; play one with a local directory taken for a remote one.
  monkeypatch.setattr(storage, "is_remote", lambda path: True)
  workdir = str(tmp_path)
  (tmp_path / metrics_log.METRICS_FILE).write_text("".join(
      json.dumps({"step": s, "train/loss": 1.0}) + "\n" for s in (1, 2, 3)))
  log = metrics_log.MetricsLog(workdir, start_step=2, tensorboard=False, upload_every_s=3600)
  assert [r["step"] for r in metrics_log.read_metrics(workdir)] == [1, 2]  # past the checkpoint: gone
  log.write([{"step": 3, "train/loss": 0.5}])
  assert [r["step"] for r in metrics_log.read_metrics(workdir)] == [1, 2]  # not uploaded yet
  log.flush()
  assert [r["step"] for r in metrics_log.read_metrics(workdir)] == [1, 2, 3]
  log.upload_every_s = 0  # the time-based upload
  log.write([{"step": 4, "train/loss": 0.4}])
  assert [r["step"] for r in metrics_log.read_metrics(workdir)] == [1, 2, 3, 4]
  log.upload_every_s = 3600
  log.write([{"step": 5, "train/loss": 0.3}])
  log.close()
  assert metrics_log.read_metrics(workdir)[-1] == {"step": 5, "train/loss": 0.3}
