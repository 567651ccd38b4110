"""Multi-process training through `launch/local.sh`: 2 processes x 2 CPU devices, gloo collectives.

One workdir lives through the life of a preemptible job: SIGTERM to one process at a random step (all
processes must stop at one agreed step and save together), a re-run that is SIGKILLed after a
periodic checkpoint, and a re-run to the end under pmap (the first two use jit over the mesh). The
result must match an uninterrupted run of one process with 4 devices, and every step must be logged
once. resnet8 on digits, batch 16.

The interrupted runs are given more steps than they can reach (the learning rate is constant, so
total_steps changes nothing else): JAX notices SIGTERM within about a second, which is dozens of these
tiny steps on a fast machine, and the signals must land before the end whatever the machine's speed.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from resnet_jax.config import default_config
from resnet_jax.run import errors, metrics_log
from resnet_jax.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
CKPT_EVERY = 4
NEVER = 100_000  # total_steps of the runs that are interrupted
# lr 0.01, not the quickstart's 0.1: at 0.1 the first-ulp differences between 1x4 and 2x2 device
# reductions grow past 1e-5 within ~20 steps (the loss trajectory is chaotic); at 0.01 they stay
# ~1e-7 (measured to step 64).
OVERRIDES = dict(model="resnet8", dataset="digits", batch_size=16, eval_batch_size=64,
                 learning_rate=0.01, lr_decay_steps=(), log_every_steps=1, eval_every_steps=0,
                 checkpoint_every_steps=CKPT_EVERY, keep_checkpoints=100)


def one_process_config(total_steps):
  config = default_config()
  config.update(num_devices=4, total_steps=total_steps, **OVERRIDES)
  return config


def final_params(workdir):
  _, state = loop.restore(workdir, num_devices=4)
  return jax.device_get(state.params), int(state.step)


def checkpoint_steps(workdir):
  # Orbax writes into a temporary directory and renames it to the bare step number when committed.
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


class LocalRun:
  """`launch/local.sh 2` in the background, with its output in files and its processes' pids."""

  def __init__(self, workdir, log_name, **overrides):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # this venv's resnet-jax
    logs = os.path.dirname(workdir)
    # The re-runs compile the same programs: JAX's persistent cache saves ~40% of each launch.
    env.update(JAX_COMPILATION_CACHE_DIR=os.path.join(logs, "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    flags = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
             for k, v in dict(OVERRIDES, **overrides).items()]
    self.err_path = os.path.join(logs, log_name + ".err")
    with open(self.err_path, "w") as err, open(os.path.join(logs, log_name + ".out"), "w") as out:
      # A session of its own, so that a failed test can kill local.sh and its processes together.
      self.proc = subprocess.Popen(
          ["launch/local.sh", "--devices-per-process", "2", "2", "--config", "configs/quickstart.py",
           "--workdir", workdir, *flags], cwd=REPO, env=env, stdout=out, stderr=err,
          start_new_session=True)

  def stderr(self):
    with open(self.err_path) as f:
      return f.read()

  def pids(self):
    return [int(p) for p in re.findall(r"process \d of 2: pid (\d+)", self.stderr())]

  def wait_for(self, condition, what, timeout=240):
    deadline = time.monotonic() + timeout
    while not condition():
      assert self.proc.poll() is None, (
          f"run ended (status {self.proc.returncode}) before {what}:\n{self.stderr()[-3000:]}")
      assert time.monotonic() < deadline, f"timed out waiting for {what}"
      time.sleep(0.02)

  def finish(self, timeout=300):
    return self.proc.wait(timeout=timeout)

  def kill(self):
    if self.proc.poll() is None:
      os.killpg(self.proc.pid, signal.SIGKILL)
      self.proc.wait()


@pytest.fixture
def local_run():
  """Starts LocalRuns; any still going when the test ends (it failed) is killed with its processes."""
  runs = []

  def start(*args, **kwargs):
    runs.append(LocalRun(*args, **kwargs))
    return runs[-1]

  yield start
  for run in runs:
    run.kill()


def test_two_processes_survive_sigterm_and_sigkill_and_match_one_process(tmp_path, local_run):
  workdir = str(tmp_path / "run")
  seed = random.randrange(2 ** 32)
  signal_after = random.Random(seed).randint(2, 8)
  context = f"(random seed {seed}: SIGTERM after step {signal_after})"

  # 1. SIGTERM to process 1 only, as a preemption notice reaching one host first; two steps per
  # dispatch, so the stop step JAX agrees on can fall inside a dispatch.
  run = local_run(workdir, "1_sigterm", total_steps=NEVER, steps_per_dispatch=2, log_every_steps=2)
  run.wait_for(lambda: len(metrics_log.read_metrics(workdir)) >= signal_after, f"step {signal_after}")
  os.kill(run.pids()[1], signal.SIGTERM)
  assert run.finish() == errors.EXIT_STOPPED_EARLY, run.stderr()[-3000:]
  stops = re.findall(r"stopped early by SIGTERM at step (\d+)", run.stderr())
  assert len(stops) == 2 and stops[0] == stops[1], (stops, context)  # both, at the same step
  stopped = int(stops[0])
  assert stopped >= signal_after and stopped % 2 == 0, context  # at a dispatch's end
  assert checkpoint_steps(workdir)[-1] == stopped, context

  # 2. The re-run resumes there; SIGKILL one process once a newer periodic checkpoint is committed.
  run = local_run(workdir, "2_sigkill", total_steps=NEVER)
  run.wait_for(lambda: checkpoint_steps(workdir)[-1] > stopped, "a periodic checkpoint")
  os.kill(run.pids()[0], signal.SIGKILL)
  assert run.finish() == 128 + signal.SIGKILL, run.stderr()[-3000:]  # local.sh stops the other
  periodic = checkpoint_steps(workdir)[-1]
  assert periodic % CKPT_EVERY == 0 and periodic > stopped, (periodic, context)

  # 3. The last re-run resumes from that checkpoint and finishes a few steps later, under pmap: the
  # other strategy reads the same checkpoints (global arrays replicated on every device).
  steps = periodic + 3
  run = local_run(workdir, "3_finish", total_steps=steps, parallelism="pmap")
  assert run.finish() == 0, run.stderr()[-3000:]
  rows = metrics_log.read_metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, steps + 1)), context  # each step logged once
  params, step = final_params(workdir)
  assert step == steps

  # The same steps, uninterrupted, in one process with 4 devices.
  reference = str(tmp_path / "one_process")
  loop.train_and_evaluate(one_process_config(steps), reference)
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(final_params(reference)[0])))
  assert diff <= 1e-5, (diff, context)
