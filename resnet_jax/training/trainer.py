"""Everything compiled for one config: data, model, optimizer and the data-parallel steps.

`Trainer(config)` builds them in data-flow order (config -> data -> model -> optimizer -> step ->
strategy); `restore(workdir)` rebuilds a run's trainer and newest state from its workdir, for
evaluation, analyses and fine-tuning.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections

from resnet_jax import config as config_lib
from resnet_jax import data, models
from resnet_jax.data import on_device
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
    self.dataset = data.get_dataset(config, models.default_image_size(config.model))
    if config.num_classes and config.num_classes != self.dataset.num_classes:
      raise ValueError(f"num_classes={config.num_classes} but dataset {config.dataset!r} has "
                       f"{self.dataset.num_classes}; set 0 to use the dataset's.")
    axis_name = parallel.AXIS if config.parallelism == "pmap" else None
    self.model = build_model(config, self.dataset.num_classes, axis_name)
    self.learning_rate_fn = optim.create_learning_rate_fn(config)
    self.tx = optim.create_optimizer(config)
    self.strategy = parallel.create(config.parallelism, self.devices, self.model, self.tx,
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

  def init_state(self) -> TrainState:
    init = jax.jit(functools.partial(create_train_state, self.model, self.tx,
                                     image_shape=self.dataset.image_shape))
    return init(jax.random.PRNGKey(self.config.seed))

  def evaluate(self, state) -> dict[str, float]:
    """Loss and accuracy over the whole test split, each example counted once."""
    totals = None
    for batch in self.dataset.eval_batches(self.config.eval_batch_size):
      sums = self.strategy.eval_step(state, self.strategy.put_batch(batch))
      totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    totals = self.strategy.fetch(totals)
    count = float(totals["count"])
    return {"eval/loss": float(totals["loss"]) / count, "eval/accuracy": float(totals["correct"]) / count}


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
