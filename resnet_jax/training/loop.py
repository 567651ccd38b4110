"""The training loop: `train_and_evaluate(config, workdir)`, read top to bottom in data-flow order.

config -> data -> model -> optimizer -> compiled step -> state (restored or new) -> loop -> checkpoints.

Nothing is lost, whatever happens: the workdir is locked for the run, checked writable before any
compilation, resumed from its newest checkpoint that restores (damaged ones are moved aside), under a
config that must match in every key that changes what the run computes; SIGTERM or a first Ctrl-C
finishes the step and saves; a full disk is reported with the last good checkpoint. Each way of
stopping has its exit code (`resnet_jax.training.errors`).
"""

import collections
import json
import math
import shutil
import signal
import time
from typing import Any

import jax
from etils import epath
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from resnet_jax import storage
from resnet_jax.models import flops
from resnet_jax.training import checkpoints, console, metrics_log
from resnet_jax.training import workdir as workdir_lib
from resnet_jax.training.errors import DiskFullError, NonFiniteError, StoppedEarly
from resnet_jax.training.trainer import Trainer, restore

class StopFlag:
  """Turns SIGTERM, or a first Ctrl-C, into a step at which every process stops (finish, save, exit).

  A single process sets a flag from a Python signal handler; a second Ctrl-C raises
  KeyboardInterrupt at once. Processes of a `jax.distributed` run must all stop at the same step even
  if only one of them got SIGTERM, or the collective save would hang: there JAX's preemption service
  (started by `jax.distributed.initialize`) catches SIGTERM and agrees on a step through the
  coordination service, in a background thread. The loop's check is a local read, so nothing is
  synchronised on the steps before a signal arrives.
  """

  def __init__(self, say):
    self.say = say
    self.requested, self.reason = False, ""

  def __enter__(self):
    # JAX's service installs its own SIGTERM handler; a Python one would replace it.
    self._distributed = jax.distributed.is_initialized()
    self._old = {}
    if not self._distributed:
      self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
      self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested:
      signal.signal(signal.SIGINT, self._old[signal.SIGINT])
      raise KeyboardInterrupt
    if not self.requested:
      self.reason = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
      hint = " (press Ctrl-C again to stop at once, without saving)" if signum == signal.SIGINT else ""
      self.say(f"{self.reason}: finishing the current step, then saving a checkpoint{hint}")
    self.requested = True

  def reached(self, step: int, steps: int = 1) -> bool:
    """Whether to stop after the dispatch that ran `steps` steps up to `step`; call after each one.

    JAX's sync point is one step number (the fastest process's latest plus one), so every step
    number of the dispatch is offered to it: all processes meet it in the same dispatch.
    """
    if self._distributed:
      for s in range(step - steps + 1, step + 1):
        if multihost_utils.reached_preemption_sync_point(s):
          self.requested, self.reason = True, self.reason or "SIGTERM"
    return self.requested

  def __exit__(self, *exc):
    for signum, handler in self._old.items():
      signal.signal(signum, handler)


def _host_int(x) -> int:
  # A replicated array on a multi-process mesh is not fully addressable (jax.device_get refuses
  # it); every process holds a whole copy, so read the local one.
  return int(np.asarray(x.addressable_data(0)))


def _host_rows(strategy, pending: list, first_step: int) -> list[dict]:
  """Fetches the buffered per-step metrics in one transfer; raises on the first non-finite value."""
  return metric_rows(strategy.fetch(pending), first_step)


def metric_rows(fetched: list[dict], first_step: int) -> list[dict]:
  """One row per step from host metrics of consecutive dispatches; raises on a non-finite value."""
  rows = []
  per_step = []
  for metrics in fetched:  # scalars, or stacked [K] from K steps in one dispatch
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


def disk_full_error(error: BaseException, workdir: str, ckpt: checkpoints.Checkpointer) -> DiskFullError:
  free = ""
  if not storage.is_remote(workdir):
    free = f" ({shutil.disk_usage(workdir).free / 2**20:.1f} MiB free there)"
  try:
    ckpt.wait()  # a save still in flight may yet complete: the message must name it if it does
  except Exception:  # pylint: disable=broad-except  # it failed too: the full disk is the news
    pass
  committed = sorted(int(p.name) for p in epath.Path(ckpt.directory).iterdir() if p.name.isdigit())
  last = (f"The last good checkpoint is step {committed[-1]} in {ckpt.directory}"
          if committed else "No checkpoint was completed")
  return DiskFullError(f"the disk holding {workdir} is full{free}: a checkpoint or metrics write "
                       f"failed. {last}; nothing was deleted. Free some space (or give "
                       "keep_checkpoints a smaller value) and re-run the same command to resume.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds a checkpoint); returns the last metrics row."""
  lead = jax.process_index() == 0
  say = console.Console(enabled=lead).say
  # Setup: everything that can reject the config or the workdir runs before anything is written.
  say(f"{workdir}: {config.model} on {config.dataset}, {config.total_steps} steps; loading the data")
  trainer = Trainer(config)
  strategy = trainer.strategy
  workdir_lib.check_writable(workdir)
  lock = workdir_lib.Lock(workdir) if lead else None
  if lock is not None:
    lock.__enter__()
  ckpt = log = None
  aborted = failed = False
  try:
    workdir_lib.check_resumable(workdir, config)
    ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)

    # State: the newest checkpoint that restores, else a fresh initialisation (seeded by init_from).
    fresh = trainer.init_state()
    state, restored = ckpt.restore_newest_valid(fresh, strategy.state_sharding)
    if state is None:
      state = trainer.init_state(pretrained=True) if config.init_from else fresh
    start = _host_int(state.step)
    if restored is not None:
      say(f"resumed from step {start} (checkpoint {ckpt.directory}/{restored})")
    if lead:
      write_run_files(workdir, config, trainer, start)
    state = strategy.put_state(state)
    log = metrics_log.MetricsLog(workdir, start) if lead else None
    last = (metrics_log.read_metrics(workdir) or [{"step": start}])[-1] if lead else {}
    if start >= config.total_steps:
      say(f"{workdir}: already finished ({start}/{config.total_steps} steps); nothing to do.")
      return last
    last = _loop(config, workdir, trainer, state, start, ckpt, log, last, say)
    ckpt.wait()  # an asynchronous save's error (e.g. a full disk) surfaces here, inside the try
    return last
  except KeyboardInterrupt:
    aborted = failed = True  # a second Ctrl-C: do not wait for anything
    raise
  except Exception as e:  # pylint: disable=broad-except
    failed = True
    if ckpt is not None and checkpoints.is_disk_full(e):
      raise disk_full_error(e, workdir, ckpt) from e
    raise
  finally:
    try:
      close_quietly(ckpt if not aborted else None, log, quiet=failed)
    except Exception as e:  # pylint: disable=broad-except  # only raised when nothing failed before
      if ckpt is not None and checkpoints.is_disk_full(e):
        raise disk_full_error(e, workdir, ckpt) from e
      raise
    finally:
      if lock is not None:
        lock.__exit__(None, None, None)


def write_run_files(workdir: str, config: ml_collections.ConfigDict, trainer: Trainer,
                    start: int) -> None:
  """config.json, config_history.jsonl and model.json (the network's size, for reports)."""
  workdir_lib.record_config(workdir, config, start)
  storage.write_atomic(epath.Path(workdir) / "model.json", json.dumps(
      {"model": config.model, "image_shape": list(trainer.dataset.image_shape),
       **flops.profile(trainer.model, trainer.dataset.image_shape[0],
                       trainer.dataset.image_shape[-1])}))


def close_quietly(ckpt, log, quiet: bool) -> None:
  """Waits for the last checkpoint to commit and closes the logs; with `quiet`, an error here (the
  same full disk, say) must not hide the one already on its way up, so it is dropped."""
  for close in (ckpt.close if ckpt else None, log.close if log else None):
    if close is None:
      continue
    try:
      close()
    except Exception:  # pylint: disable=broad-except
      if not quiet:
        raise


def _loop(config, workdir, trainer, state, start, ckpt, log, last, say) -> dict[str, Any]:
  """Dispatches steps asynchronously; fetches metrics only at the log, eval and checkpoint cadence."""
  strategy, lead = trainer.strategy, log is not None
  progress = console.ProgressBar(config.total_steps, start) if lead else None
  inflight = collections.deque()  # (step, a metric array) of dispatched steps not yet seen done
  pending, t_log, n_log = [], time.perf_counter(), start
  elapsed = last.get("perf/elapsed_s", 0.0) if lead else 0.0  # wall time carries across resumes
  say(f"compiling the train step (first call); training from step {start + 1}")
  with StopFlag(say) as stop:
    n, n_pending = start, 0
    while n < config.total_steps:
      state, metrics, k = trainer.dispatch(state, n)
      pending.append(metrics)
      n, n_pending = n + k, n_pending + k
      if progress is not None:
        # Progress from host-side counts of finished steps, at every step: no device sync, but for
        # the first dispatch, whose end is the end of compilation: the bar shows from step 1.
        inflight.append((n, next(iter(metrics.values()))))
        if n - k == start:
          inflight[0][1].block_until_ready()
        while inflight and inflight[0][1].is_ready():
          progress.update(inflight.popleft()[0])
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
        if progress is not None:
          progress.update(n)  # the fetch above waited for every step up to n
          progress.note(f"evaluating at step {n}")
        rows[-1].update(trainer.evaluate(state))
      if lead:
        log.write(rows)
        inflight.clear()  # everything up to n is done: its metrics were fetched
        progress.update(n, rows[-1], force=True)
        last = rows[-1]
      if do_ckpt:
        ckpt.save(n, strategy.get_state(state), force=True)
        if lead:
          log.flush()  # the rows up to a checkpoint must outlive the run (gs:// uploads lazily)
      if stopping:
        ckpt.wait()
        raise StoppedEarly(f"stopped early by {stop.reason} at step {n}; checkpoint saved in "
                           f"{ckpt.directory}. Re-run the same command to resume.")
  if lead:
    say(f"finished {config.total_steps} steps; metrics in {epath.Path(workdir) / metrics_log.METRICS_FILE}")
  return last


def evaluate_checkpoint(workdir: str) -> dict[str, Any]:
  """Evaluates the newest checkpoint in `workdir` under the config the run wrote there."""
  trainer, state = restore(workdir)
  return {"step": _host_int(state.step), **trainer.evaluate(trainer.strategy.put_state(state))}
