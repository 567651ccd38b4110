"""Which launch a process belongs to (`distributed.detect`), and the metrics log of a gs:// workdir."""

import json
import os

import pytest

from resnet_jax.run import storage
from resnet_jax.run import distributed, metrics_log
from resnet_jax.run.errors import LaunchError


SLURM = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_LOCALID": "0"}
OMPI = {"OMPI_MCA_orte_hnp_uri": "1234.0;tcp://10.0.0.1:5000"}


@pytest.mark.parametrize("env,kind", [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}, "env"),
    # An sbatch shell, or srun with one task, is a single process.
    ({**SLURM, "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),
    ({**SLURM, "SLURM_PROCID": "3", "SLURM_NTASKS": "8"}, "slurm"),
    ({**SLURM, "SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "1"}, None),
    # Not what JAX's SLURM detection recognises (it needs all of its five variables).
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "8"}, None),
    ({**OMPI, "OMPI_COMM_WORLD_SIZE": "4"}, "mpi"),
    ({**OMPI, "OMPI_COMM_WORLD_SIZE": "1"}, None),
])
def test_detect(env, kind):
  assert distributed.detect(env) == kind


@pytest.mark.parametrize("env", [
    {}, {**SLURM, "SLURM_PROCID": "3", "SLURM_NTASKS": "8"}, {"SLURM_PROCID": "3", "SLURM_NTASKS": "8"},
    {**SLURM, "SLURM_NTASKS": "8"}, {**OMPI, "OMPI_COMM_WORLD_SIZE": "4"}, {"OMPI_COMM_WORLD_SIZE": "4"},
])
def test_detection_agrees_with_jax(env, monkeypatch):
  """Our SLURM / Open MPI detection is JAX's own, read from the same variables."""
  from jax._src.clusters import ompi_cluster, slurm_cluster  # pylint: disable=g-import-not-at-top

  for name in list(os.environ):
    if name.startswith(("SLURM_", "OMPI_")):
      monkeypatch.delenv(name)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert distributed.jax_detects("slurm", env) == slurm_cluster.SlurmCluster.is_env_present()
  assert distributed.jax_detects("mpi", env) == ompi_cluster.OmpiCluster.is_env_present()


def test_open_mpi_that_jax_cannot_read_is_an_error_saying_what_to_set():
  with pytest.raises(LaunchError, match="JAX_COORDINATOR_ADDRESS=.*OMPI_COMM_WORLD_RANK"):
    distributed.detect({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "1"})


def test_bad_process_variables_are_errors_naming_them(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  monkeypatch.setenv("JAX_PROCESS_ID", "0")
  with pytest.raises(LaunchError, match="JAX_NUM_PROCESSES='two' must be an integer"):
    distributed.initialize()
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  with pytest.raises(LaunchError, match=r"JAX_PROCESS_ID=2 must be in \[0, JAX_NUM_PROCESSES=2\)"):
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
