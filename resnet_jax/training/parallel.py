"""Data parallelism: one pure step, compiled with `jax.jit` over a device mesh or with `jax.pmap`.

Every strategy (these two, and the vectorised group of `group_step`), the memory estimate, `bench`
and `compile` bind the step one way (`config_step`), and every strategy gives the loop one
interface, `Strategy`, for the members it trains. A solo run is a group of one: `MeshJit` and `Pmap`
take the member-shaped methods from `OneMember`, where one member's list is that member and its
values come back as they are.
"""

import functools
from typing import Any, Callable, Protocol

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax.data import EvalLayout, on_device
from resnet_jax.training import optim, xla_cpu
from resnet_jax.training.step import eval_step, train_step

AXIS = "data"


def config_step(model, config, hparams: dict | None = None, axis_name=None) -> Callable:
  """`train_step(state, batch)` of `config`, with everything else bound: the one place a step is made.

  The optimizer and schedule come from the config, with a vectorised member's (traced) `hparams`
  replacing its TRACEABLE values; each member's chain then has a solo run's tree.
  """
  smoothing = config.label_smoothing if hparams is None else hparams["label_smoothing"]
  return functools.partial(train_step, model=model, tx=optim.create_optimizer(config, hparams),
                           learning_rate_fn=optim.create_learning_rate_fn(config, hparams),
                           label_smoothing=smoothing, freeze_bn_stats=config.freeze_bn_stats,
                           axis_name=axis_name)


class Strategy(Protocol):
  """What the loop asks of a strategy, for the M members it trains (M = 1 for a solo run).

  `MeshJit` (and `GroupJit`) add `mesh`, `replicated` and `sharded`, which the ahead-of-time compile
  reads.
  """
  devices: list                  # this process's devices (Pmap), or the mesh's (MeshJit)
  platform: str                  # the platform the programs are for
  compiler_options: Any          # XLA options of the compiled steps, or None
  train_step: Callable           # (state, batch) -> (state, metrics)
  eval_step: Callable            # (state, eval batch) -> summed metrics, the same batch for every member
  state_sharding: Any            # where a restored state's arrays go

  def bind_members(self, configs: list) -> None:
    """The per-member values the dispatches that follow need (seeds, a group's optimizer values)."""

  def stack(self, states: list) -> Any:
    """The members' states as the one state the step takes."""

  def put_state(self, state) -> Any:
    """A state (host or global arrays) placed on the devices."""

  def member_state(self, state, i: int = 0) -> Any:
    """Member i's state as device-count-independent global arrays, for its checkpoint."""

  def put_batch(self, member_batches: list[dict]) -> Any:
    """This process's share of one step's batch per member, placed for `train_step`."""

  def put_batches(self, steps: list[list[dict]]) -> Any:
    """K steps of `put_batch`'s batches, placed for `multi_step(k)`."""

  def multi_step(self, k: int) -> Callable:
    """K steps in one dispatch: (state, batches) -> (state, metrics stacked [K])."""

  def device_steps(self, k: int, batch_size: int, augment: str) -> Callable:
    """K steps whose batches are drawn on the devices: (state, `put_data`'s data) -> as above."""

  def put_data(self, images: np.ndarray, labels: np.ndarray) -> Any:
    """The whole training set on the devices, for `device_steps`."""

  def put_eval_batch(self, local_batch: dict) -> Any:
    """A test batch (this process's share), placed for `eval_step`."""

  def fetch(self, tree) -> Any:
    """Host values of the step's replicated outputs."""

  def member_values(self, fetched, i: int = 0) -> Any:
    """Member i's share of fetched values."""


class OneMember:
  """The member-shaped methods of a strategy that trains one member: a list of one member's states
  or batches is that member's, and what comes back is that member's already."""

  def bind_members(self, configs: list) -> None:
    (config,) = configs
    del config  # nothing per member on the devices

  def stack(self, states: list):
    (state,) = states
    return state

  def put_batch(self, member_batches: list[dict]):
    (local_batch,) = member_batches
    return self.put_eval_batch(local_batch)

  def member_state(self, state, i: int = 0):
    del i
    return state

  def member_values(self, fetched, i: int = 0):
    del i
    return fetched


def select_devices(num_devices: int = 0) -> list:
  """All devices of every process, or the first `num_devices` (validated: single process only)."""
  devices = jax.devices()
  return devices[:num_devices] if num_devices else devices


class MeshJit(OneMember):
  """`jax.jit` with the batch sharded on its leading axis over a 1-D mesh and the state replicated.

  The step sees the global batch, so BN statistics over the whole batch are exact (XLA inserts the
  cross-device reductions) and the state buffers are donated.
  """
  axis_name = None

  def __init__(self, devices, step: Callable, model, compiler_options=None, platform=None, *,
               eval_layout: EvalLayout = EvalLayout()):
    self.devices = devices
    # The platform the program is for: the devices', or the one it is lowered for (targets/gpu.py).
    self.platform = platform or devices[0].platform
    self.compiler_options = compiler_options or None
    self.mesh = Mesh(np.asarray(devices), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(AXIS))
    self.train_step = self._jit(step, in_shardings=(self.replicated, self.sharded),
                                out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    self.eval_step = self._jit(functools.partial(eval_step, model=model, layout=eval_layout),
                               in_shardings=(self.replicated, self.sharded),
                               out_shardings=self.replicated)
    self._step, self._compiled, self.seed = step, {}, 0

  def _jit(self, fn, **kwargs):
    return jax.jit(fn, compiler_options=self.compiler_options, **kwargs)

  def bind_members(self, configs: list) -> None:
    """A solo run's one member: its seed draws the on-device batches (a constant of the program)."""
    (config,) = configs
    self.seed = int(config.seed)

  def multi_step(self, k: int):
    """K steps in one dispatch: `lax.scan` of the step over batches stacked on a leading K axis.

    Returns (state, metrics) with every metric stacked [K], so each step is still recorded.
    """
    if ("host", k) not in self._compiled:
      run = lambda state, batches: xla_cpu.scan(self, self._step, state, batches, k)
      self._compiled["host", k] = self._jit(
          run, in_shardings=(self.replicated, NamedSharding(self.mesh, P(None, AXIS))),
          out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    return self._compiled["host", k]

  def put_batches(self, steps: list[list[dict]]):
    """K steps of one member's batch (this process's share) for `multi_step`, sharded on the batch."""
    sharding = NamedSharding(self.mesh, P(None, AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, np.stack([b[0][k] for b in steps]))
            for k in steps[0][0]}

  def device_steps(self, k: int, batch_size: int, augment: str):
    """K steps whose batches are drawn and augmented on device from `data` (`resnet_jax.data.on_device`)."""
    seed = self.seed
    key = ("device", k, seed, batch_size, augment)
    if key not in self._compiled:
      def run(state, data):
        def body(state, _):
          batch = on_device.sample_batch(data, seed, state.step, batch_size, augment)
          batch = jax.lax.with_sharding_constraint(batch, self.sharded)  # each device its share
          return self._step(state, batch)
        return xla_cpu.scan(self, body, state, None, k)

      self._compiled[key] = self._jit(run, in_shardings=(self.replicated, self.replicated),
                                      out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    return self._compiled[key]

  def put_data(self, images: np.ndarray, labels: np.ndarray):
    """The whole training set, replicated on every device (it must fit; CIFAR-10 is 600 MB float32)."""
    return self.put_state({"image": images, "label": labels})

  @property
  def state_sharding(self):
    return self.replicated

  def put_state(self, state):
    def put(x):
      if isinstance(x, jax.Array) and x.sharding == self.replicated:
        return x  # already in place (e.g. restored by Orbax onto this mesh)
      x = np.asarray(jax.device_get(x))
      return jax.make_array_from_callback(x.shape, self.replicated, lambda i: x[i])
    return jax.tree_util.tree_map(put, state)

  def put_eval_batch(self, local_batch: dict):
    """A test batch (its images may be a tuple of scales), sharded on the batch axis."""
    return jax.tree_util.tree_map(
        lambda v: jax.make_array_from_process_local_data(self.sharded, v), local_batch)

  def fetch(self, tree):
    """Host copy of replicated outputs; one local replica is enough (also in multi-process runs)."""
    return jax.device_get(jax.tree_util.tree_map(lambda x: x.addressable_data(0), tree))


class Pmap(OneMember):
  """`jax.pmap` over the local devices with axis name "data": gradients and metrics are averaged."""
  axis_name = AXIS

  def __init__(self, devices, step: Callable, model, compiler_options=None, platform=None, *,
               eval_layout: EvalLayout = EvalLayout()):
    del compiler_options  # jax.pmap takes none: `cpu_fusion` applies to the jit strategy only
    self.devices = [d for d in devices if d.process_index == jax.process_index()]
    self.platform = platform or devices[0].platform
    # pmap's inputs carry a leading axis of one entry per local device.
    self.stacked = NamedSharding(Mesh(np.asarray(self.devices), (AXIS,)), P(AXIS))
    self.compiler_options = None
    # Every process names all devices, so the axis (and its gradient mean) spans every process;
    # each process feeds its local ones (jax.pmap's `devices` contract in multi-process runs).
    self.train_step = jax.pmap(step, axis_name=AXIS, devices=devices, donate_argnums=0)
    self.eval_step = jax.pmap(functools.partial(eval_step, model=model, layout=eval_layout,
                                                axis_name=AXIS),
                              axis_name=AXIS, devices=devices)
    self._step, self._all_devices, self._compiled = step, devices, {}

  def multi_step(self, k: int):
    """K steps per dispatch: `lax.scan` inside the pmap; metrics come back stacked [K]."""
    if k not in self._compiled:
      self._compiled[k] = jax.pmap(lambda state, batches: xla_cpu.scan(self, self._step, state, batches, k),
                                   axis_name=AXIS, devices=self._all_devices, donate_argnums=0)
    return self._compiled[k]

  def put_batches(self, steps: list[list[dict]]):
    n = len(self.devices)
    def stack(key):
      x = np.stack([b[0][key] for b in steps])  # [K, local batch, ...]
      x = x.reshape((x.shape[0], n, -1) + x.shape[2:])
      return jax.device_put(np.swapaxes(x, 0, 1), self.stacked)  # [device, K, per-device batch, ...]
    return {key: stack(key) for key in steps[0][0]}

  def device_steps(self, *args):
    raise NotImplementedError("data_on_device needs parallelism='jit' (validated before any run).")

  @property
  def state_sharding(self):
    # Checkpoints hold global arrays replicated on every device of every process, as MeshJit's do:
    # Orbax refuses process-local arrays in a multi-process run, and either strategy restores either.
    return NamedSharding(Mesh(np.asarray(self._all_devices), (AXIS,)), P())

  def put_state(self, state):
    n = len(self.devices)

    def put(x):
      x = np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)  # a local replica
      return jax.device_put(np.broadcast_to(x, (n,) + x.shape), self.stacked)
    return jax.tree_util.tree_map(put, state)

  def put_eval_batch(self, local_batch: dict):
    n = len(self.devices)
    return jax.tree_util.tree_map(
        lambda v: jax.device_put(np.reshape(v, (n, -1) + v.shape[1:]), self.stacked), local_batch)

  def member_state(self, state, i: int = 0):
    """The state as global arrays (`state_sharding`): each local device's replica becomes one shard."""
    del i
    replicated = self.state_sharding

    def unstack(x):
      return jax.make_array_from_single_device_arrays(
          x.shape[1:], replicated, [s.data.reshape(x.shape[1:]) for s in x.addressable_shards])
    return jax.tree_util.tree_map(unstack, state)

  def fetch(self, tree):
    """Host copy of the (identical, averaged) first device's outputs."""
    return jax.device_get(jax.tree_util.tree_map(lambda x: x[0], tree))


def create(parallelism: str, devices, step: Callable, model, compiler_options=None,
           platform=None, *, eval_layout: EvalLayout = EvalLayout()) -> Strategy:
  """The data-parallel strategy named by `config.parallelism` (validated: "jit" or "pmap"), its
  evaluation step taking batches of `eval_layout` (the run's `Derived.eval_layout`)."""
  return (MeshJit if parallelism == "jit" else Pmap)(devices, step, model, compiler_options, platform,
                                                     eval_layout=eval_layout)
