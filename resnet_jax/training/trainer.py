"""Everything a run builds from its config: devices, data, model, optimizer, step and strategy.

`Trainer(config)` validates the config (`validation`), then builds in data-flow order: data ->
model -> optimizer -> bound step -> data-parallel strategy. The same constructor serves every use:

- a solo run, `Trainer(config)`, and a vectorised group, `Trainer(base, members=configs)`;
- a build from shapes alone, `Trainer(config, data=spec, devices=...)`, with a `data.DataSpec`
  instead of a dataset and any devices (a TPU topology's, say): nothing is read, so the exact step a
  run would compile can be compiled where the data and devices are not (`resnet-jax compile`).

`restore(workdir)` rebuilds a run's trainer and newest state from its workdir, for evaluation,
analyses and fine-tuning; no program is compiled to restore.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections

from resnet_jax import config as config_lib
from resnet_jax import data as data_lib
from resnet_jax import models
from resnet_jax.run import workdir as workdir_lib
from resnet_jax.run.errors import WorkdirError
from resnet_jax.training import checkpoints, derived, parallel, validation, xla_cpu
from resnet_jax.training.group_step import GroupJit
from resnet_jax.training.init_from import seed_from
from resnet_jax.training.step import TrainState, create_train_state


def build_model(config: ml_collections.ConfigDict, num_classes: int, axis_name=None):
  """The model named by the config, with its config-level overrides applied."""
  overrides = {"num_classes": num_classes, "dtype": jnp.dtype(config.dtype), "axis_name": axis_name,
               "bn_momentum": config.bn_momentum, "bn_group_size": config.bn_group_size,
               "width_multiplier": config.width_multiplier}
  for key in ("zero_init_residual", "scan_blocks", "remat_blocks", "shortcut", "stride_placement"):
    if config[key]:  # "" / False: the preset's own choice
      overrides[key] = config[key]
  return models.get_model(config.model, **overrides)


class Trainer:
  """The objects one run, or one vectorised group of runs, trains with."""

  def __init__(self, config: ml_collections.ConfigDict, *, members: Optional[list] = None,
               data=None, devices: Optional[list] = None, platform: Optional[str] = None):
    """`members`: the configs of a vectorised group (`config` is their base; None: a solo run).
    `data`: a dataset, a `DataSpec` (shapes only: nothing can be trained or evaluated), or None to
    open `config.dataset`. `devices`: where to compile (default: the config's `num_devices`).
    `platform`: the platform the programs are for, when they are only lowered for another
    (`jax.export`; default: the devices')."""
    self.config = config
    self.members = list(members) if members is not None else [config]
    for member in self.members:
      validation.validate(member, devices)  # before anything is read, made or compiled
    self.devices = devices or parallel.select_devices(config.num_devices)
    self.derived = derived.derive(config, self.devices)
    self.dataset = (data_lib.get_dataset(config, self.derived.image_size, self.derived.eval_layout,
                                         check=validation.metadata_check(config),
                                         normalize_on_device=True) if data is None else data)
    self.derived = self.derived.with_data(self.dataset)
    self.image_shape, self.num_classes = self.derived.image_shape, self.derived.num_classes
    axis_name = parallel.AXIS if config.parallelism == "pmap" else None
    self.model = build_model(config, self.num_classes, axis_name)
    self.step = parallel.config_step(self.model, config, axis_name=axis_name)
    # The optimizer the step was bound with: every member's state has its tree.
    self.tx = self.step.keywords["tx"]
    self.platform = platform or self.devices[0].platform
    options = xla_cpu.cpu_compiler_options(config.cpu_fusion, self.platform)
    if members is not None:
      self.strategy = GroupJit(self.devices, self.model, config, options, self.platform,
                               eval_layout=self.derived.eval_layout)
    else:
      self.strategy = parallel.create(config.parallelism, self.devices, self.step, self.model,
                                      options, self.platform, eval_layout=self.derived.eval_layout)
    self.strategy.bind_members(self.members)
    self._device_data = None  # the training set on the devices, with data_on_device

  @property
  def seeds(self) -> list[int]:
    return [int(m.seed) for m in self.members]

  def bind_members(self, configs: list) -> None:
    """Trains `configs` (a subset of the group: members catching up) from the next dispatch on."""
    self.members = list(configs)
    self.strategy.bind_members(self.members)

  # --- State. ---

  def init_state(self, seed: Optional[int] = None, variables=None) -> TrainState:
    """A new run's state from `seed` (default: the config's): random parameters, or `variables`
    (converted weights) with the optimizer state and RNG a fresh run of that seed starts with."""
    init = jax.jit(functools.partial(create_train_state, self.model, self.tx,
                                     image_shape=self.image_shape))
    return init(jax.random.PRNGKey(self.config.seed if seed is None else seed), variables=variables)

  def abstract_state(self):
    """The state's shapes and dtypes, without computing (or compiling) anything: a restore template."""
    return jax.eval_shape(functools.partial(create_train_state, self.model, self.tx,
                                            image_shape=self.image_shape),
                          jax.random.PRNGKey(self.config.seed))

  def first_state(self, seed: Optional[int] = None) -> TrainState:
    """Step 0 of a new run: its random initialisation, seeded from `init_from` if the config says."""
    state = self.init_state(seed)
    return seed_from(self, self.config.init_from, state) if self.config.init_from else state

  # --- Steps. ---

  def batches(self, step: int) -> list[dict]:
    """This process's share of global batch `step`, one per member (its own seed)."""
    return [self.dataset.train_batch(seed, step, self.config.batch_size) for seed in self.seeds]

  def device_data(self):
    if self._device_data is None:
      self._device_data = self.strategy.put_data(*self.dataset.train_arrays())
    return self._device_data

  def dispatch_call(self, step: int, k: int, abstract: bool = False):
    """(compiled function, its arguments after the state) running the k steps from `step`.

    One step per dispatch by default. With steps_per_dispatch = K the host's batches are stacked
    for one scanned program; with data_on_device the batches are drawn inside it. `abstract`: the
    arguments' shapes, dtypes and shardings only, read from no data (for ahead-of-time compiles).
    """
    c, strategy = self.config, self.strategy
    if c.data_on_device:
      data = self._abstract_data() if abstract else self.device_data()
      return strategy.device_steps(k, c.batch_size, c.augment), (data,)
    if c.steps_per_dispatch == 1:
      batch = (self._abstract_batch(strategy.sharded) if abstract
               else self._normalized(strategy.put_batch(self.batches(step))))
      return strategy.train_step, (batch,)
    if abstract:
      batches = self._abstract_batch(jax.sharding.NamedSharding(strategy.mesh, P(None, "data")), k)
    else:
      batches = self._normalized(strategy.put_batches([self.batches(s)
                                                       for s in range(step, step + k)]))
    return strategy.multi_step(k), (batches,)

  def _normalized(self, batch):
    """A placed batch, its uint8 images normalised on the devices where the dataset left them so."""
    normalize = getattr(self.dataset, "device_normalizer", None)
    return batch if normalize is None else normalize(batch)

  def _abstract_batch(self, sharding, k: Optional[int] = None) -> dict:
    lead = (self.config.batch_size,) if k is None else (k, self.config.batch_size)
    return {"image": jax.ShapeDtypeStruct(lead + self.image_shape, jnp.float32, sharding=sharding),
            "label": jax.ShapeDtypeStruct(lead, jnp.int32, sharding=sharding)}

  def _abstract_data(self) -> dict:
    """The training set as `device_data` holds it: every image, normalised, on every device."""
    n = self.dataset.train_size  # a DataSpec's counts the hold-out; an opened dataset's does not
    if isinstance(self.dataset, data_lib.DataSpec):
      n -= self.config.validation_split
    replicated = self.strategy.replicated
    return {"image": jax.ShapeDtypeStruct((n,) + self.image_shape, jnp.float32, sharding=replicated),
            "label": jax.ShapeDtypeStruct((n,), jnp.int32, sharding=replicated)}

  def abstract_eval_batch(self) -> dict:
    """An evaluation batch's shapes: images as the run's `eval_layout` holds them, labels, the mask."""
    sharding, size = self.strategy.sharded, self.derived.eval_batch_size
    shapes = self.derived.eval_layout.image_shapes(size, self.image_shape)
    struct = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)
    image = tuple(map(struct, shapes)) if isinstance(shapes[0], tuple) else struct(shapes)
    return {"image": image,
            "label": jax.ShapeDtypeStruct((size,), jnp.int32, sharding=sharding),
            "mask": jax.ShapeDtypeStruct((size,), jnp.float32, sharding=sharding)}

  def dispatch(self, state, step: int, k: int):
    """Runs the k steps of one dispatch from `step`: (state, metrics), asynchronously."""
    fn, args = self.dispatch_call(step, k)
    return fn(state, *args)

  def evaluate(self, state) -> list[dict[str, float]]:
    """Each member's loss and accuracy over the whole test split, each example counted once."""
    totals = None
    for batch in self.dataset.eval_batches(self.derived.eval_batch_size):
      sums = self.strategy.eval_step(state, self._normalized(self.strategy.put_eval_batch(batch)))
      totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    totals = self.strategy.fetch(totals)
    out = []
    for i in range(len(self.members)):
      t = self.strategy.member_values(totals, i)
      count = float(t["count"])
      out.append({"eval/loss": float(t["loss"]) / count, "eval/accuracy": float(t["correct"]) / count})
    return out


class NoCheckpointError(WorkdirError):
  """The workdir holds a run's config but no checkpoint yet."""


def restore(workdir: str, step: Optional[int] = None,
            **overrides) -> tuple[Trainer, TrainState]:
  """A run's trainer (under the config it wrote) and its newest (or `step`'s) checkpointed state.

  `overrides` replace config keys first (e.g. num_devices=1 for a small analysis). The state comes
  back in the strategy's checkpoint layout (`state_sharding`); `trainer.strategy.put_state` places
  it for the compiled steps.
  """
  saved = workdir_lib.read_config(workdir)
  if saved is None:
    raise WorkdirError(f"{workdir} has no {workdir_lib.CONFIG_FILE}; is it the --workdir of a "
                       "training run?")
  config = config_lib.from_dict(saved)
  if overrides:
    config.unlock()
    config.update(overrides)
    config.lock()
  trainer = Trainer(config)
  ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    if ckpt.latest_step() is None:
      raise NoCheckpointError(f"{workdir} has no checkpoint yet; train first (resnet-jax train ...).")
    state = ckpt.restore(trainer.abstract_state(), trainer.strategy.state_sharding, step)
  finally:
    ckpt.close()
  return trainer, state
