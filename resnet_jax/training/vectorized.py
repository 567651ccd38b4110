"""Vectorised sweep members: several runs of one network trained together by one compiled step.

Members that agree on every key but VARYING (resnet_jax.training.grouping) train as one group: their
states are stacked on a member axis and one vmapped step (resnet_jax.training.group_step) serves
them all, one program and one dispatch per step. A CIFAR ResNet-20 step is ~31 GFLOP, a fraction of
a millisecond of an accelerator, so one run at a time leaves it idle (docs/PERFORMANCE.md).

Each member stays an ordinary run (own workdir, lock, config, metrics, checkpoints with a solo
run's tree), equal to its solo run up to float summation order (tests/test_vectorized.py). A member
whose loss turns non-finite fails alone. Members move in lockstep; those left behind by a crash
between two members' saves first catch up, as a smaller group.
"""

import contextlib
import dataclasses
import functools
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import config as config_lib
from resnet_jax.data import on_device
from resnet_jax.training import checkpoints, console, loop, metrics_log, optim
from resnet_jax.training import step as step_lib
from resnet_jax.training import workdir as workdir_lib
# Re-exported: the grouping rules, the group's compiled step and its size estimate are part of this
# module's API.
from resnet_jax.training.group_step import GroupJit  # pylint: disable=unused-import
from resnet_jax.training.memory import device_memory_bytes, members_that_fit  # pylint: disable=unused-import
from resnet_jax.training.grouping import (HPARAMS, VARYING, check_group, group_key,  # pylint: disable=unused-import
                                          plan_groups, unsupported)
from resnet_jax.training.errors import NonFiniteError, StoppedEarly
from resnet_jax.training.trainer import Trainer

@dataclasses.dataclass
class _Member:
  """One member's run: its config, workdir, checkpoints, log and where it stands."""
  config: ml_collections.ConfigDict
  workdir: str
  ckpt: Any = None
  log: Any = None
  state: Any = None
  step: int = 0
  elapsed: float = 0.0
  error: Optional[BaseException] = None

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.workdir))


def train_group(configs: list, workdirs: list, say: Optional[Callable] = None,
                on_done: Optional[Callable] = None) -> list[Optional[BaseException]]:
  """Trains compatible `configs` together, each into its own workdir (resuming each from there).

  Splits them into chunks of `vectorize_max_members` (0: as many as fit in device memory) and runs
  the chunks in turn. Returns, per member, None (finished) or the NonFiniteError that failed it;
  `on_done(index, error)` is also called as each chunk ends. Errors of the whole group (a bad
  config, a workdir in use, a stop by SIGTERM, a full disk) raise, as `train_and_evaluate`'s do.
  """
  if len(configs) != len(workdirs):
    raise ValueError(f"{len(configs)} configs but {len(workdirs)} workdirs.")
  check_group(configs)
  say = say or console.Console(enabled=jax.process_index() == 0).say
  for config in configs:
    config_lib.validate(config)
    optim.create_learning_rate_fn(config)  # checks each member's optimisation keys before any work
  base = configs[0]
  say(f"vectorised group of {len(configs)}: {base.model} on {base.dataset}, {base.total_steps} "
      f"steps; loading the data")
  trainer = Trainer(base)
  strategy = GroupJit(trainer.devices, trainer.model, base, trainer.strategy.compiler_options)
  cap = base.vectorize_max_members or members_that_fit(trainer)
  if cap < len(configs):
    say(f"at most {cap} members fit in one group here (vectorize_max_members="
        f"{base.vectorize_max_members}); training {len(configs)} in chunks of {cap}")
  errors: list[Optional[BaseException]] = []
  for start in range(0, len(configs), cap):
    chunk = _train_chunk(trainer, strategy, configs[start:start + cap], workdirs[start:start + cap],
                         say)
    for i, error in enumerate(chunk, start):
      if on_done is not None:
        on_done(i, error)
    errors += chunk
  return errors


def _train_chunk(trainer, strategy, configs, workdirs, say) -> list[Optional[BaseException]]:
  """Locks, restores and trains one chunk of members; closes everything however it ends."""
  members = [_Member(c, str(w)) for c, w in zip(configs, workdirs)]
  for m in members:
    workdir_lib.check_writable(m.workdir)
  failed = aborted = False
  with contextlib.ExitStack() as locks:
    for m in members:
      locks.enter_context(workdir_lib.Lock(m.workdir))
    try:
      init = jax.jit(functools.partial(step_lib.create_train_state, trainer.model, trainer.tx,
                                       image_shape=trainer.dataset.image_shape))
      for m in members:
        workdir_lib.check_resumable(m.workdir, m.config)
        m.ckpt = checkpoints.Checkpointer(m.workdir, keep=m.config.keep_checkpoints)
        # The solo run's initialisation, from the member's seed (Trainer.init_state).
        fresh = init(jax.random.PRNGKey(m.config.seed))
        state, restored = m.ckpt.restore_newest_valid(fresh, strategy.state_sharding)
        m.state = fresh if state is None else state
        m.step = int(np.asarray(m.state.step.addressable_data(0)))
        if restored is not None:
          say(f"[{m.name}] resumed from step {m.step} (checkpoint {m.ckpt.directory}/{restored})")
        loop.write_run_files(m.workdir, m.config, trainer, m.step)
        m.log = metrics_log.MetricsLog(m.workdir, m.step)
        rows = metrics_log.read_metrics(m.workdir)
        m.elapsed = rows[-1].get("perf/elapsed_s", 0.0) if rows else 0.0
      _run(trainer, strategy, members, say)
      for m in members:
        m.ckpt.wait()
    except KeyboardInterrupt:
      aborted = failed = True
      raise
    except Exception as e:  # pylint: disable=broad-except
      failed = True
      for m in members:
        if m.ckpt is not None and checkpoints.is_disk_full(e):
          raise loop.disk_full_error(e, m.workdir, m.ckpt) from e
      raise
    finally:
      for m in members:
        loop.close_quietly(m.ckpt if not aborted else None, m.log, quiet=failed)
  return [m.error for m in members]


def _run(trainer, strategy, members, say) -> None:
  """Trains the members to total_steps in lockstep; those behind catch up first, as a smaller group."""
  total = members[0].config.total_steps
  with loop.StopFlag(say) as stop:
    while True:
      live = [m for m in members if m.error is None and m.step < total]
      if not live:
        break
      low = min(m.step for m in live)
      ahead = sorted({m.step for m in live if m.step > low})
      until = ahead[0] if ahead else total
      segment = [m for m in live if m.step == low]
      if ahead:
        say(f"{', '.join(m.name for m in segment)} at step {low}, others at {ahead[0]}: catching up "
            "first (a crash came between the members' checkpoints)")
      _segment(trainer, strategy, segment, low, until, stop, say)
  for m in members:
    if m.error is None:
      say(f"[{m.name}] finished {total} steps; metrics in {m.workdir}/{metrics_log.METRICS_FILE}")


def _stack(states: list):
  """Members' states (global or host arrays) -> one host tree with a leading member axis."""
  def host(x):
    return np.asarray(jax.device_get(x.addressable_data(0) if isinstance(x, jax.Array) else x))
  return jax.tree_util.tree_map(lambda *xs: np.stack([host(x) for x in xs]), *states)


def _segment(trainer, strategy, segment, start: int, until: int, stop, say) -> None:
  """Steps `start` -> `until` of the `segment` members as one vmapped program (the loop's cadence)."""
  c = segment[0].config
  states = strategy.put_state(_stack([m.state for m in segment]))
  hparams = strategy.put_state({k: np.asarray([m.config[k] for m in segment], np.float32)
                                for k in HPARAMS})
  seeds = [int(m.config.seed) for m in segment]
  data = seed_array = None
  if c.data_on_device:
    data = strategy.put_data(*on_device.train_arrays(trainer.dataset))
    seed_array = strategy.put_state(np.asarray(seeds, np.int32))
  progress = console.ProgressBar(c.total_steps, start) if jax.process_index() == 0 else None
  pending, t_log, n_log = [], time.perf_counter(), start
  say(f"compiling the group's train step (first call); training {len(segment)} members from step "
      f"{start + 1}")
  n, n_pending = start, 0
  while n < until:
    k = min(c.steps_per_dispatch - n % c.steps_per_dispatch, until - n)
    if c.data_on_device:
      states, metrics = strategy.device_steps(k, c.batch_size, c.augment)(states, data, hparams,
                                                                           seed_array)
    elif c.steps_per_dispatch == 1:
      batch = strategy.put_member_batches([trainer.dataset.train_batch(s, n, c.batch_size)
                                           for s in seeds])
      states, metrics = strategy.train_step(states, batch, hparams)
    else:
      batches = strategy.put_member_batch_steps(
          [[trainer.dataset.train_batch(s, i, c.batch_size) for s in seeds] for i in range(n, n + k)])
      states, metrics = strategy.multi_step(k)(states, batches, hparams)
    pending.append(metrics)
    n, n_pending = n + k, n_pending + k
    final = n == c.total_steps
    stopping = stop.reached(n, k)
    do_eval = final or (c.eval_every_steps and n % c.eval_every_steps == 0)
    do_ckpt = final or stopping or n == until or (
        c.checkpoint_every_steps and n % c.checkpoint_every_steps == 0)
    if not (do_eval or do_ckpt or n % c.log_every_steps == 0):
      if progress is not None and next(iter(metrics.values())).is_ready():
        progress.update(n)
      continue
    fetched = strategy.fetch(pending)  # per metric [M], or [K, M] from K steps in one dispatch
    first = n - n_pending + 1
    pending, n_pending = [], 0
    now = time.perf_counter()
    seconds, images = now - t_log, (n - n_log) * c.batch_size
    t_log, n_log = now, n
    if do_eval and progress is not None:
      progress.update(n)
      progress.note(f"evaluating {len(segment)} members at step {n}")
    evals = _evaluate(trainer, strategy, states, len(segment)) if do_eval else None
    shown = None
    for i, m in enumerate(segment):
      if m.error is not None:
        continue
      try:
        rows = loop.metric_rows([{key: v[..., i] for key, v in f.items()} for f in fetched], first)
      except NonFiniteError as e:
        m.error = e
        say(f"[{m.name}] FAILED: {e} The other members go on.")
        continue
      m.elapsed += seconds
      rows[-1]["perf/images_per_sec"] = images / seconds  # each member's own throughput
      rows[-1]["perf/elapsed_s"] = m.elapsed
      if evals is not None:
        rows[-1].update(evals[i])
      m.log.write(rows)
      shown = shown or rows[-1]
    if progress is not None:
      progress.update(n, shown, force=True)
    if do_ckpt:
      for i, m in enumerate(segment):
        if m.error is None:
          m.ckpt.save(n, jax.tree_util.tree_map(lambda x, i=i: x[i], states), force=True)
          m.log.flush()
    if stopping:
      for m in segment:
        m.ckpt.wait()
      raise StoppedEarly(f"stopped early by {stop.reason} at step {n}; checkpoints saved in each "
                         "member's workdir. Re-run the same command to resume.")
  for i, m in enumerate(segment):
    if m.error is None:
      m.state = jax.tree_util.tree_map(lambda x, i=i: x[i], states)
      m.step = until


def _evaluate(trainer, strategy, states, count: int) -> list[dict]:
  """Each member's loss and accuracy over the whole test split (Trainer.evaluate, per member)."""
  totals = None
  for batch in trainer.dataset.eval_batches(trainer.config.eval_batch_size):
    sums = strategy.eval_step(states, strategy.put_batch(batch))
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
  totals = strategy.fetch(totals)
  return [{"eval/loss": float(totals["loss"][i]) / float(totals["count"][i]),
           "eval/accuracy": float(totals["correct"][i]) / float(totals["count"][i])}
          for i in range(count)]
