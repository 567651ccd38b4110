"""The training loop: `train_and_evaluate(config, workdir)`, read top to bottom in data-flow order.

config -> data -> model -> optimizer -> compiled step -> state (restored or new) -> loop -> checkpoints.
"""

import functools
import json
import math
import signal
import time
from typing import Any

import jax
from etils import epath
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from resnet_jax import checkpointing, configuration, device_data, flops, input_pipeline, models
from resnet_jax import optim, parallel
from resnet_jax import reporting
from resnet_jax import train_step as ts

# Exit code of a run that stopped early on SIGTERM after saving a checkpoint: "try again" (sysexits.h
# EX_TEMPFAIL). Re-running the same command resumes it.
EXIT_STOPPED_EARLY = 75
# Keys that shape the train state: a checkpoint only resumes under the same values.
_STATE_KEYS = ("model", "dataset", "num_classes", "image_size", "shortcut", "stride_placement",
               "width_multiplier", "momentum_style", "grad_clip_norm", "scan_blocks")


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
  if config.scan_blocks:
    overrides["scan_blocks"] = True
  if config.remat_blocks:
    overrides["remat_blocks"] = True
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
                              self.learning_rate_fn, config.label_smoothing,
                              parallel.cpu_compiler_options(config.cpu_fusion, self.devices))
    self._device_data = None  # the training set on the devices, with data_on_device
    if config.data_on_device and config.parallelism != "jit":
      raise ValueError("data_on_device=True needs parallelism='jit' (the batch is drawn inside the "
                       "jit-compiled step over the mesh).")
    k = config.steps_per_dispatch
    for key in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
      if k < 1 or config[key] % k:
        raise ValueError(f"{key}={config[key]} must be a multiple of steps_per_dispatch={k} "
                         "(metrics, evaluations and checkpoints happen between dispatches).")

  def dispatch(self, state, step: int):
    """Runs the steps of one dispatch from `step`: (state, metrics, number of steps run).

    One step per dispatch by default. With steps_per_dispatch = K, chunks end at multiples of K (so
    a run resumed at any step keeps the same cadence); with data_on_device the batches are drawn
    inside the compiled function, else the host's batches are stacked.
    """
    c, dp = self.config, self.dp
    k = min(c.steps_per_dispatch - step % c.steps_per_dispatch, c.total_steps - step)
    if c.data_on_device:
      if self._device_data is None:
        self._device_data = dp.put_data(*device_data.train_arrays(self.dataset))
      fn = dp.device_steps(k, c.seed, c.batch_size, c.augment)
      return (*fn(state, self._device_data), k)
    if c.steps_per_dispatch == 1:
      batch = dp.put_batch(self.dataset.train_batch(c.seed, step, c.batch_size))
      return (*dp.train_step(state, batch), 1)
    batches = [self.dataset.train_batch(c.seed, s, c.batch_size) for s in range(step, step + k)]
    return (*dp.multi_step(k)(state, dp.put_batches(batches)), k)

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
  path = epath.Path(workdir) / "config.json"  # a local path or gs://
  if not path.exists():
    return
  old = json.loads(path.read_text())
  changed = [k for k in _STATE_KEYS if k in old and old[k] != config[k]]
  if changed:
    diff = ", ".join(f"{k}: {old[k]!r} -> {config[k]!r}" for k in changed)
    raise ValueError(f"{workdir} holds a run with a different {diff}; its checkpoints cannot resume "
                     "under this config. Use a new --workdir (nothing was changed).")


class _SigtermFlag:
  """Turns SIGTERM into a step at which every process stops (finish the step, save, exit).

  A single process sets a flag from a Python signal handler. Processes of a `jax.distributed` run
  must all stop at the same step even if only one of them got SIGTERM, or the collective save would
  hang: there JAX's preemption service (started by `jax.distributed.initialize`) catches SIGTERM and
  agrees on a step through the coordination service, in a background thread. The loop's check is a
  local read, so nothing is synchronised on the steps before a signal arrives.
  """

  def __enter__(self):
    self.requested = False
    # JAX's service installs its own SIGTERM handler; a Python one would replace it.
    self._distributed = jax.distributed.is_initialized()
    if not self._distributed:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int, steps: int = 1) -> bool:
    """Whether to stop after the dispatch that ran `steps` steps up to `step`; call after each one.

    JAX's sync point is one step number (the fastest process's latest plus one), so every step
    number of the dispatch is offered to it: all processes meet it in the same dispatch.
    """
    if self._distributed:
      for s in range(step - steps + 1, step + 1):
        self.requested |= multihost_utils.reached_preemption_sync_point(s)
    return self.requested

  def __exit__(self, *exc):
    if not self._distributed:
      signal.signal(signal.SIGTERM, self._old)


def _host_int(x) -> int:
  # A replicated array on a multi-process mesh is not fully addressable (jax.device_get refuses
  # it); every process holds a whole copy, so read the local one.
  return int(np.asarray(x.addressable_data(0)))


def _host_rows(dp, pending: list, first_step: int) -> list[dict]:
  """Fetches the buffered per-step metrics in one transfer; raises on the first non-finite value."""
  rows = []
  per_step = []
  for metrics in dp.fetch(pending):  # scalars, or stacked [K] from K steps in one dispatch
    k = np.size(next(iter(metrics.values())))
    per_step += [{key: np.ravel(v)[i] for key, v in metrics.items()} for i in range(k)]
  for i, metrics in enumerate(per_step):
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
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)

  # State: the newest checkpoint in the workdir, else a fresh initialisation.
  state = trainer.init_state()
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state, dp.state_sharding)
  start = _host_int(state.step)
  if lead:
    root = epath.Path(workdir)
    (root / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    (root / "model.json").write_text(json.dumps(  # for reports: size and cost of the net
        {"model": config.model, "image_shape": list(trainer.dataset.image_shape),
         **flops.profile(trainer.model, trainer.dataset.image_shape[0], trainer.dataset.image_shape[-1])}))
  state = dp.put_state(state)
  log = reporting.MetricsLog(workdir, start) if lead else None
  progress = reporting.ProgressBar(config.total_steps, start) if lead else None
  last = (reporting.read_metrics(workdir) or [{"step": start}])[-1] if lead else {}
  if lead and start >= config.total_steps:
    print(f"{workdir}: already finished ({start}/{config.total_steps} steps); nothing to do.")

  # Loop: dispatch steps asynchronously; fetch metrics only at the log, eval and checkpoint cadence.
  pending, t_log, n_log = [], time.perf_counter(), start
  elapsed = last.get("perf/elapsed_s", 0.0) if lead else 0.0  # wall time carries across resumes
  try:
    with _SigtermFlag() as stop:
      n, n_pending = start, 0
      while n < config.total_steps:
        state, metrics, k = trainer.dispatch(state, n)
        pending.append(metrics)
        n, n_pending = n + k, n_pending + k
        final = n == config.total_steps
        stopping = stop.reached(n, k)
        do_eval = final or (config.eval_every_steps and n % config.eval_every_steps == 0)
        do_ckpt = final or stopping or (
            config.checkpoint_every_steps and n % config.checkpoint_every_steps == 0)
        if not (do_eval or do_ckpt or n % config.log_every_steps == 0):
          continue
        rows = _host_rows(dp, pending, n - n_pending + 1)  # checked before any save below
        pending, n_pending = [], 0
        now = time.perf_counter()
        rows[-1]["perf/images_per_sec"] = (n - n_log) * config.batch_size / (now - t_log)
        elapsed += now - t_log
        rows[-1]["perf/elapsed_s"] = elapsed
        t_log, n_log = now, n
        if do_eval:
          rows[-1].update(trainer.evaluate(state))
        if lead:
          log.write(rows)
          progress.update(n, rows[-1])
          last = rows[-1]
        if do_ckpt:
          ckpt.save(n, dp.get_state(state), force=True)
          if lead:
            log.flush()  # the rows up to a checkpoint must outlive the run (gs:// uploads lazily)
        if stopping:
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
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise ValueError(f"{workdir} has no config.json; is it the --workdir of a training run?")
  trainer = Trainer(configuration.from_json(path))
  ckpt = checkpointing.Checkpointer(workdir, keep=trainer.config.keep_checkpoints)
  if ckpt.latest_step() is None:
    raise ValueError(f"{workdir} has no checkpoint yet; train first (resnet-jax train ...).")
  state = trainer.dp.put_state(ckpt.restore(trainer.init_state(), trainer.dp.state_sharding))
  result = {"step": _host_int(trainer.dp.get_state(state).step),
            **trainer.evaluate(state)}
  ckpt.close()
  return result
