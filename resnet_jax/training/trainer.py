"""Everything compiled for one config: data, model, optimizer and the data-parallel steps.

`Trainer(config)` builds them in data-flow order (config -> data -> model -> optimizer -> step ->
strategy); `restore(workdir)` rebuilds a run's trainer and newest state from its workdir, for
evaluation, analyses and fine-tuning. With `init_from`, `init_state(pretrained=True)` seeds a new
run's parameters and BN statistics from another run's newest checkpoint (fine-tuning).
"""

import functools
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections

from resnet_jax import config as config_lib
from resnet_jax import data, models
from resnet_jax.data import on_device
from resnet_jax.models import stages
from resnet_jax.training import checkpoints, optim, parallel
from resnet_jax.training.step import TrainState, create_train_state


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
    config_lib.validate(config)
    self.config = config
    self.devices = parallel.select_devices(config.num_devices)
    parallel.check_batch_size(config.batch_size, len(self.devices))
    parallel.check_batch_size(config.eval_batch_size, len(self.devices), "eval_batch_size")
    # The optimisation keys are checked first: a bad schedule must not wait for the data to load.
    self.learning_rate_fn = optim.create_learning_rate_fn(config)
    self.tx = optim.create_optimizer(config)
    self.dataset = data.get_dataset(config, models.default_image_size(config.model))
    if config.num_classes and config.num_classes != self.dataset.num_classes:
      raise ValueError(f"num_classes={config.num_classes} but dataset {config.dataset!r} has "
                       f"{self.dataset.num_classes}; set 0 to use the dataset's.")
    axis_name = parallel.AXIS if config.parallelism == "pmap" else None
    self.model = build_model(config, self.dataset.num_classes, axis_name)
    if (config.freeze_bn_stats or config.freeze_backbone) and not config.init_from:
      raise ValueError("freeze_bn_stats and freeze_backbone keep what a pretrained network learnt; "
                       "set init_from=WORKDIR (a run's, or `resnet-jax convert`'s) to start from one.")
    self.strategy = parallel.create(config.parallelism, self.devices, self.model, self.tx,
                              self.learning_rate_fn, config.label_smoothing,
                              parallel.cpu_compiler_options(config.cpu_fusion, self.devices),
                              freeze_bn_stats=config.freeze_bn_stats)
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
    c, strategy = self.config, self.strategy
    k = min(c.steps_per_dispatch - step % c.steps_per_dispatch, c.total_steps - step)
    if c.data_on_device:
      if self._device_data is None:
        self._device_data = strategy.put_data(*on_device.train_arrays(self.dataset))
      fn = strategy.device_steps(k, c.seed, c.batch_size, c.augment)
      return (*fn(state, self._device_data), k)
    if c.steps_per_dispatch == 1:
      batch = strategy.put_batch(self.dataset.train_batch(c.seed, step, c.batch_size))
      return (*strategy.train_step(state, batch), 1)
    batches = [self.dataset.train_batch(c.seed, s, c.batch_size) for s in range(step, step + k)]
    return (*strategy.multi_step(k)(state, strategy.put_batches(batches)), k)

  def init_state(self, pretrained: bool = False) -> TrainState:
    """A new train state: random, or with `pretrained` (and `config.init_from`) seeded from there.

    The random state is also the template every checkpoint restores into. The loop asks for
    `pretrained` only when the workdir holds no checkpoint yet, so init_from seeds step 0 of a new
    run and a resumed run reads its own checkpoints.
    """
    init = jax.jit(functools.partial(create_train_state, self.model, self.tx,
                                     image_shape=self.dataset.image_shape))
    state = init(jax.random.PRNGKey(self.config.seed))
    if pretrained and self.config.init_from:
      state = self._seed_from(self.config.init_from, state)
    return state

  def _seed_from(self, source: str, state: TrainState) -> TrainState:
    """`state` with params and batch_stats from `source`'s newest checkpoint, a fresh optimizer state,
    and its own (random) head where the class count differs or `init_new_head` asks for one."""
    from etils import epath  # pylint: disable=g-import-not-at-top

    config_path = epath.Path(source) / "config.json"
    if not (config_path.exists() and (epath.Path(source) / "checkpoints").exists()):
      raise ValueError(f"init_from={source!r} is not the workdir of a run or of `resnet-jax convert` "
                       "(it needs config.json and checkpoints/).")
    theirs = config_lib.from_json(str(config_path))
    for key in ("model", "width_multiplier"):
      if theirs[key] != self.config[key]:
        raise ValueError(f"init_from={source!r} holds a {key}={theirs[key]!r} network; this run has "
                         f"{key}={self.config[key]!r}. Set --config.{key}={theirs[key]} (only the "
                         "head may differ).")
    ckpt = checkpoints.Checkpointer(source)
    try:
      step = ckpt.latest_step()
      if step is None:
        raise ValueError(f"init_from={source!r} has no checkpoint yet.")
      parts = ckpt.restore_parts(("params", "batch_stats"), self.strategy.state_sharding)
    finally:
      ckpt.close()
    fresh = {"params": state.params, "batch_stats": state.batch_stats}
    new_head = self.config.init_new_head or (
        _shape(parts["params"].get("head", {}).get("bias")) != _shape(state.params["head"]["bias"]))
    seeded = {}
    for part, tree in fresh.items():
      ours = stages.unstack_scanned(dict(tree))
      merged = _merge(ours, stages.unstack_scanned(dict(parts.get(part, {}))), source, (part,),
                      keep={"head"} if new_head else set())
      seeded[part] = stages.to_scanned(merged) if self.config.scan_blocks else merged
    if jax.process_index() == 0:
      head = (f"a new head for {self.dataset.num_classes} classes" if new_head
              else "its head")
      print(f"init_from {source} (step {step}): backbone and BN statistics, {head}.", file=sys.stderr)
    return state.replace(params=seeded["params"], batch_stats=seeded["batch_stats"],
                         opt_state=self.tx.init(seeded["params"]))

  def evaluate(self, state) -> dict[str, float]:
    """Loss and accuracy over the whole test split, each example counted once."""
    totals = None
    for batch in self.dataset.eval_batches(self.config.eval_batch_size):
      sums = self.strategy.eval_step(state, self.strategy.put_batch(batch))
      totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    totals = self.strategy.fetch(totals)
    count = float(totals["count"])
    return {"eval/loss": float(totals["loss"]) / count, "eval/accuracy": float(totals["correct"]) / count}


def _shape(x) -> Optional[tuple]:
  shape = getattr(x, "shape", None)
  return None if shape is None else tuple(shape)


def _merge(ours: Any, theirs: Any, source: str, path: tuple, keep: set) -> Any:
  """`ours` with every leaf replaced by `theirs`' at the same path; top-level names in `keep` stay
  ours. The trees must match exactly otherwise: a missing, extra or differently shaped array means a
  different architecture, which is an error naming it."""
  if not isinstance(ours, dict):
    if not hasattr(theirs, "shape") or theirs.shape != ours.shape:
      raise ValueError(f"init_from={source!r}: {'/'.join(path)} has shape {_shape(theirs)} there and "
                       f"{ours.shape} here; the architectures differ (only the head may).")
    return theirs
  names = set(ours) - (keep if len(path) == 1 else set())
  theirs = theirs if isinstance(theirs, dict) else {}
  missing = sorted(names - set(theirs))
  extra = sorted(set(theirs) - set(ours) - {"head"})
  if missing or extra:
    raise ValueError(f"init_from={source!r}: {'/'.join(path)} differs: missing there {missing[:4]}, "
                     f"extra there {extra[:4]}; the architectures differ (only the head may).")
  return {k: ours[k] if k not in names else _merge(ours[k], theirs[k], source, path + (k,), keep)
          for k in ours}


class NoCheckpointError(ValueError):
  """The workdir holds a run's config but no checkpoint yet."""


def restore(workdir: str, step: Optional[int] = None,
            **overrides) -> tuple[Trainer, TrainState]:
  """A run's trainer (under the config it wrote) and its newest (or `step`'s) checkpointed state.

  `overrides` replace config keys first (e.g. num_devices=1 for a small analysis). The state comes
  back in the strategy's checkpoint layout (`state_sharding`); `trainer.strategy.put_state` places
  it for the compiled steps.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top

  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise ValueError(f"{workdir} has no config.json; is it the --workdir of a training run?")
  config = config_lib.from_json(str(path))
  if overrides:
    config.unlock()
    config.update(overrides)
    config.lock()
  trainer = Trainer(config)
  ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    if ckpt.latest_step() is None:
      raise NoCheckpointError(f"{workdir} has no checkpoint yet; train first (resnet-jax train ...).")
    state = ckpt.restore(trainer.init_state(), trainer.strategy.state_sharding, step)
  finally:
    ckpt.close()
  return trainer, state
