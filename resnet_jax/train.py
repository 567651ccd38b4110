"""The training loop: `train_and_evaluate(config, workdir)`, read top to bottom in data-flow order.

config -> data -> model -> optimizer -> compiled step -> state (restored or new) -> loop -> checkpoints.
"""

import functools
import json
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import checkpointing, configuration, input_pipeline, models, optim, parallel, reporting
from resnet_jax import train_step as ts

# Exit code of a run that stopped early on SIGTERM after saving a checkpoint: "try again" (sysexits.h
# EX_TEMPFAIL). Re-running the same command resumes it.
EXIT_STOPPED_EARLY = 75
# Keys that shape the train state: a checkpoint only resumes under the same values.
_STATE_KEYS = ("model", "dataset", "num_classes", "image_size", "shortcut", "stride_placement",
               "width_multiplier", "momentum_style", "grad_clip_norm")


class StoppedEarly(Exception):
  """SIGTERM arrived; a checkpoint was saved and the run can resume (exit EXIT_STOPPED_EARLY)."""


class NonFiniteError(RuntimeError):
  """A loss or gradient norm was NaN or infinite; checkpoints from before it are kept."""


def build_model(config: ml_collections.ConfigDict, num_classes: int, axis_name=None):
  """The model named by the config, with its config-level overrides applied."""
  overrides = {"num_classes": num_classes, "dtype": jnp.dtype(config.dtype), "axis_name": axis_name,
               "bn_momentum": config.bn_momentum, "bn_group_size": config.bn_group_size,
               "width_multiplier": config.width_multiplier}
  if config.zero_init_residual:
    overrides["zero_init_residual"] = True
  if config.shortcut:
    overrides["shortcut"] = config.shortcut
  if config.stride_placement:
    overrides["stride_placement"] = config.stride_placement
  return models.get_model(config.model, **overrides)


class Trainer:
  """Everything compiled for one config: data, model, optimizer and the data-parallel steps."""

  def __init__(self, config: ml_collections.ConfigDict):
    configuration.validate(config)
    self.config = config
    self.devices = parallel.select_devices(config.num_devices)
    parallel.check_batch_size(config.batch_size, len(self.devices))
    parallel.check_batch_size(config.eval_batch_size, len(self.devices), "eval_batch_size")
    self.dataset = input_pipeline.get_dataset(config, models.default_image_size(config.model))
    if config.num_classes and config.num_classes != self.dataset.num_classes:
      raise ValueError(f"num_classes={config.num_classes} but dataset {config.dataset!r} has "
                       f"{self.dataset.num_classes}; set 0 to use the dataset's.")
    axis_name = parallel.AXIS if config.parallelism == "pmap" else None
    self.model = build_model(config, self.dataset.num_classes, axis_name)
    self.learning_rate_fn = optim.create_learning_rate_fn(config)
    self.tx = optim.create_optimizer(config)
    self.dp = parallel.create(config.parallelism, self.devices, self.model, self.tx,
                              self.learning_rate_fn, config.label_smoothing)

  def init_state(self) -> ts.TrainState:
    init = jax.jit(functools.partial(ts.create_train_state, self.model, self.tx,
                                     image_shape=self.dataset.image_shape))
    return init(jax.random.PRNGKey(self.config.seed))

  def evaluate(self, state) -> dict[str, float]:
    """Loss and accuracy over the whole test split, each example counted once."""
    totals = None
    for batch in self.dataset.eval_batches(self.config.eval_batch_size):
      sums = self.dp.eval_step(state, self.dp.put_batch(batch))
      totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    totals = self.dp.fetch(totals)
    count = float(totals["count"])
    return {"eval/loss": float(totals["loss"]) / count, "eval/accuracy": float(totals["correct"]) / count}


def _check_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  changed = [k for k in _STATE_KEYS if k in old and old[k] != config[k]]
  if changed:
    diff = ", ".join(f"{k}: {old[k]!r} -> {config[k]!r}" for k in changed)
    raise ValueError(f"{workdir} holds a run with a different {diff}; its checkpoints cannot resume "
                     "under this config. Use a new --workdir (nothing was changed).")


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop checks after each step (finish the step, save, exit)."""

  def __enter__(self):
    self.requested = False
    self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._old)


def _host_rows(dp, pending: list, first_step: int) -> list[dict]:
  """Fetches the buffered per-step metrics in one transfer; raises on the first non-finite value."""
  rows = []
  for i, metrics in enumerate(dp.fetch(pending)):
    row = {"step": first_step + i, **{k: float(v) for k, v in metrics.items()}}
    bad = [k for k in ("train/loss", "train/grad_norm") if not math.isfinite(row[k])]
    if bad:
      raise NonFiniteError(
          f"non-finite {', '.join(bad)} at step {row['step']} ({', '.join(str(row[k]) for k in bad)}). "
          "The checkpoints saved before it are kept; lower learning_rate, add warm-up or "
          "grad_clip_norm, and re-run to resume from the last good checkpoint.")
    rows.append(row)
  return rows


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds a checkpoint); returns the last metrics row."""
  # Setup: everything that can reject the config runs before anything is written.
  trainer = Trainer(config)
  dp, lead = trainer.dp, jax.process_index() == 0
  _check_resumable(workdir, config)
  os.makedirs(workdir, exist_ok=True)
  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)

  # State: the newest checkpoint in the workdir, else a fresh initialisation.
  state = trainer.init_state()
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state, dp.state_sharding)
  start = int(jax.device_get(state.step))
  if lead:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  state = dp.put_state(state)
  log = reporting.MetricsLog(workdir, start) if lead else None
  progress = reporting.ProgressBar(config.total_steps, start) if lead else None
  last = (reporting.read_metrics(workdir) or [{"step": start}])[-1] if lead else {}
  if start >= config.total_steps:
    print(f"{workdir}: already finished ({start}/{config.total_steps} steps); nothing to do.")

  # Loop: dispatch steps asynchronously; fetch metrics only at the log, eval and checkpoint cadence.
  pending, t_log, n_log = [], time.perf_counter(), start
  try:
    with _SigtermFlag() as stop:
      for step in range(start, config.total_steps):
        batch = dp.put_batch(trainer.dataset.train_batch(config.seed, step, config.batch_size))
        state, metrics = dp.train_step(state, batch)
        pending.append(metrics)
        n = step + 1
        final = n == config.total_steps
        do_eval = final or (config.eval_every_steps and n % config.eval_every_steps == 0)
        do_ckpt = final or stop.requested or (
            config.checkpoint_every_steps and n % config.checkpoint_every_steps == 0)
        if not (do_eval or do_ckpt or n % config.log_every_steps == 0):
          continue
        rows = _host_rows(dp, pending, n - len(pending) + 1)  # checked before any save below
        pending = []
        now = time.perf_counter()
        rows[-1]["perf/images_per_sec"] = (n - n_log) * config.batch_size / (now - t_log)
        t_log, n_log = now, n
        if do_eval:
          rows[-1].update(trainer.evaluate(state))
        if lead:
          log.write(rows)
          progress.update(n, rows[-1])
          last = rows[-1]
        if do_ckpt:
          ckpt.save(n, dp.get_state(state), force=True)
        if stop.requested:
          ckpt.wait()
          raise StoppedEarly(f"stopped early by SIGTERM at step {n}; checkpoint saved in "
                             f"{ckpt.directory}. Re-run the same command to resume.")
  finally:
    ckpt.close()
    if log is not None:
      log.close()
  return last


def evaluate_checkpoint(workdir: str) -> dict[str, Any]:
  """Evaluates the newest checkpoint in `workdir` under the config the run wrote there."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"{workdir} has no config.json; is it the --workdir of a training run?")
  trainer = Trainer(configuration.from_json(path))
  ckpt = checkpointing.Checkpointer(workdir, keep=trainer.config.keep_checkpoints)
  if ckpt.latest_step() is None:
    raise ValueError(f"{workdir} has no checkpoint yet; train first (resnet-jax train ...).")
  state = trainer.dp.put_state(ckpt.restore(trainer.init_state(), trainer.dp.state_sharding))
  result = {"step": int(np.asarray(jax.device_get(trainer.dp.get_state(state).step))),
            **trainer.evaluate(state)}
  ckpt.close()
  return result
