"""The training loop: `train_and_evaluate(config, workdir)`, read top to bottom in data-flow order.

config -> data -> model -> optimizer -> compiled step -> state (restored or new) -> loop -> checkpoints.
"""

import json
import math
import signal
import time
from typing import Any

import jax
from etils import epath
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from resnet_jax.models import flops
from resnet_jax.training import checkpoints, metrics_log
from resnet_jax.training.trainer import Trainer, restore

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


def _host_rows(strategy, pending: list, first_step: int) -> list[dict]:
  """Fetches the buffered per-step metrics in one transfer; raises on the first non-finite value."""
  rows = []
  per_step = []
  for metrics in strategy.fetch(pending):  # scalars, or stacked [K] from K steps in one dispatch
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
  strategy, lead = trainer.strategy, jax.process_index() == 0
  _check_resumable(workdir, config)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)

  # State: the newest checkpoint in the workdir, else a fresh initialisation (seeded by init_from).
  state = trainer.init_state(pretrained=ckpt.latest_step() is None)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state, strategy.state_sharding)
  start = _host_int(state.step)
  if lead:
    root = epath.Path(workdir)
    (root / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    (root / "model.json").write_text(json.dumps(  # for reports: size and cost of the net
        {"model": config.model, "image_shape": list(trainer.dataset.image_shape),
         **flops.profile(trainer.model, trainer.dataset.image_shape[0], trainer.dataset.image_shape[-1])}))
  state = strategy.put_state(state)
  log = metrics_log.MetricsLog(workdir, start) if lead else None
  progress = metrics_log.ProgressBar(config.total_steps, start) if lead else None
  last = (metrics_log.read_metrics(workdir) or [{"step": start}])[-1] if lead else {}
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
        rows = _host_rows(strategy, pending, n - n_pending + 1)  # checked before any save below
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
          ckpt.save(n, strategy.get_state(state), force=True)
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
  trainer, state = restore(workdir)
  return {"step": _host_int(state.step), **trainer.evaluate(trainer.strategy.put_state(state))}
