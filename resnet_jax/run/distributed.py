"""Multi-process start-up: join the other processes of a run with `jax.distributed.initialize`.

Called by the CLI before anything touches devices (JAX refuses to initialise afterwards). Which cluster
we are in is read from the environment:

- `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`: any
  machines, e.g. `launch/local.sh` (several processes on one machine) or a hand-made GPU cluster;
- Cloud TPU VMs (libtpu installed, TPU chips attached): JAX reads the slice's workers from the VM
  metadata, so `initialize()` takes no arguments;
- SLURM (`srun`) or Open MPI (`mpirun`) with more than one task: JAX reads their variables.

Anywhere else the run is a single process and nothing is initialised. We call SLURM and Open MPI
launches exactly what JAX's own cluster detection (`jax._src.clusters`) recognises, and where a
launcher says "several tasks" in a form JAX cannot read (Open MPI 5 sets OMPI_COMM_WORLD_SIZE but
not Open MPI 4's OMPI_MCA_orte_hnp_uri), we say how to pass the three JAX_* variables instead of
letting `initialize()` fail with JAX's generic error.
"""

import glob
import importlib.util
import os
from typing import Optional

from resnet_jax.run.errors import LaunchError

ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _int_env(name: str, env) -> int:
  value = env.get(name, "")
  try:
    return int(value)
  except ValueError:
    raise LaunchError(f"{name}={value!r} must be an integer; with JAX_COORDINATOR_ADDRESS set, "
                     f"set all of {', '.join(ENV_VARS)}.") from None


def _on_cloud_tpu_vm() -> bool:
  # TPU chips appear as /dev/accel* (v2-v4, v5p) or VFIO groups (v5e, v6e); libtpu is the runtime
  # JAX uses there. Both together mean a Cloud TPU VM, whose metadata lists the slice's workers.
  chips = glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
  return bool(chips) and importlib.util.find_spec("libtpu") is not None


def _task_count(env, *names: str) -> int:
  for name in names:
    if env.get(name, "").isdigit():
      return int(env[name])
  return 1


# What JAX's cluster detection needs (jax/_src/clusters/slurm_cluster.py and ompi_cluster.py).
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
OMPI_URI = "OMPI_MCA_orte_hnp_uri"


def jax_detects(kind: str, env) -> bool:
  """Whether JAX's own detection of `kind` ("slurm" or "mpi") finds it in `env`."""
  if kind == "slurm":
    return all(var in env for var in SLURM_VARS)
  return OMPI_URI in env


def detect(env=None) -> Optional[str]:
  """The kind of multi-process launch this process belongs to, or None for a single process.

  One of "env" (JAX_COORDINATOR_ADDRESS and friends), "tpu", "slurm", "mpi".
  """
  env = os.environ if env is None else env
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "env"
  # SLURM_STEP_NUM_TASKS: the tasks of this `srun` step; a plain `sbatch` shell is one process.
  if (jax_detects("slurm", env)
      and _task_count(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") > 1):
    return "slurm"
  mpi_size = _task_count(env, "OMPI_COMM_WORLD_SIZE")
  if mpi_size > 1:
    if not jax_detects("mpi", env):
      raise LaunchError(
          f"an Open MPI launch of {mpi_size} processes (OMPI_COMM_WORLD_SIZE), but without "
          f"{OMPI_URI}, which JAX needs to find the others (Open MPI 5 no longer sets it). Set "
          "JAX_COORDINATOR_ADDRESS=<host of rank 0>:<free port>, JAX_NUM_PROCESSES="
          "$OMPI_COMM_WORLD_SIZE and JAX_PROCESS_ID=$OMPI_COMM_WORLD_RANK for every process.")
    return "mpi"
  if _on_cloud_tpu_vm():
    return "tpu"
  return None


def initialize() -> Optional[str]:
  """Joins the run's other processes if there are any; returns what `detect` found.

  Must run before the first JAX computation or device query. On CPU the processes talk through gloo
  (JAX's CPU backend has no cross-process collectives otherwise); GPUs and TPUs use their own.
  """
  import jax  # pylint: disable=g-import-not-at-top

  env = os.environ
  kind = detect(env)
  if kind is None or jax.distributed.is_initialized():
    return kind
  args = {}  # none: JAX reads the TPU VM's metadata, or SLURM's or Open MPI's variables, itself
  if kind == "env":
    num_processes = _int_env("JAX_NUM_PROCESSES", env)
    process_id = _int_env("JAX_PROCESS_ID", env)
    if not 0 <= process_id < num_processes:
      raise LaunchError(f"JAX_PROCESS_ID={process_id} must be in [0, JAX_NUM_PROCESSES={num_processes}).")
    args = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=num_processes,
                process_id=process_id)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**args)
  return kind


def is_lead() -> bool:
  """Whether this is process 0, the one that prints results, metrics and progress."""
  import jax  # pylint: disable=g-import-not-at-top

  return jax.process_index() == 0
