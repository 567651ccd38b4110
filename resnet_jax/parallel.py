"""Data parallelism: one pure step, compiled with `jax.jit` over a device mesh or with `jax.pmap`.

Both strategies expose the same small interface to the loop: place the state, place a batch, run the
compiled steps, and bring the state back in a device-count-independent form for checkpoints.
"""

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax import train_step as ts

AXIS = "data"
STRATEGIES = ("jit", "pmap")


def select_devices(num_devices: int = 0) -> list:
  """All devices of every process, or the first `num_devices` (single process only)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices exist; use 0 for all.")
    if jax.process_count() > 1:
      raise ValueError("num_devices must be 0 (all devices) in a multi-process run.")
    devices = devices[:num_devices]
  return devices


class MeshJit:
  """`jax.jit` with the batch sharded on its leading axis over a 1-D mesh and the state replicated.

  The step sees the global batch, so BN statistics over the whole batch are exact (XLA inserts the
  cross-device reductions) and the state buffers are donated.
  """
  axis_name = None

  def __init__(self, devices, model, tx, learning_rate_fn, label_smoothing=0.0):
    self.devices = devices
    self.mesh = Mesh(np.asarray(devices), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(AXIS))
    step = functools.partial(ts.train_step, model=model, tx=tx, learning_rate_fn=learning_rate_fn,
                             label_smoothing=label_smoothing)
    self.train_step = jax.jit(step, in_shardings=(self.replicated, self.sharded),
                              out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    self.eval_step = jax.jit(functools.partial(ts.eval_step, model=model),
                             in_shardings=(self.replicated, self.sharded),
                             out_shardings=self.replicated)

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

  def put_batch(self, local_batch: dict[str, np.ndarray]):
    return {k: jax.make_array_from_process_local_data(self.sharded, v) for k, v in local_batch.items()}

  def get_state(self, state):
    return state

  def fetch(self, tree):
    """Host copy of replicated outputs; one local replica is enough (also in multi-process runs)."""
    return jax.device_get(jax.tree_util.tree_map(lambda x: x.addressable_data(0), tree))


class Pmap:
  """`jax.pmap` over the local devices with axis name "data": gradients and metrics are averaged."""
  axis_name = AXIS

  def __init__(self, devices, model, tx, learning_rate_fn, label_smoothing=0.0):
    self.devices = [d for d in devices if d.process_index == jax.process_index()]
    # pmap's inputs carry a leading axis of one entry per local device.
    self.stacked = NamedSharding(Mesh(np.asarray(self.devices), (AXIS,)), P(AXIS))
    step = functools.partial(ts.train_step, model=model, tx=tx, learning_rate_fn=learning_rate_fn,
                             label_smoothing=label_smoothing, axis_name=AXIS)
    self.train_step = jax.pmap(step, axis_name=AXIS, devices=self.devices, donate_argnums=0)
    self.eval_step = jax.pmap(functools.partial(ts.eval_step, model=model, axis_name=AXIS),
                              axis_name=AXIS, devices=self.devices)

  @property
  def state_sharding(self):
    return jax.sharding.SingleDeviceSharding(self.devices[0])

  def put_state(self, state):
    n = len(self.devices)
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(np.broadcast_to(x, (n,) + np.shape(x)), self.stacked),
        jax.device_get(state))

  def put_batch(self, local_batch: dict[str, np.ndarray]):
    n = len(self.devices)
    return {k: jax.device_put(np.reshape(v, (n, -1) + v.shape[1:]), self.stacked)
            for k, v in local_batch.items()}

  def get_state(self, state):
    return jax.tree_util.tree_map(lambda x: x[0], state)

  def fetch(self, tree):
    """Host copy of the (identical, averaged) first device's outputs."""
    return jax.device_get(jax.tree_util.tree_map(lambda x: x[0], tree))


def create(strategy: str, devices, model, tx, learning_rate_fn: Callable, label_smoothing: float = 0.0
           ) -> Any:
  """The data-parallel strategy named by `config.parallelism`."""
  if strategy not in STRATEGIES:
    raise ValueError(f"parallelism={strategy!r} is not one of {list(STRATEGIES)}.")
  cls = MeshJit if strategy == "jit" else Pmap
  return cls(devices, model, tx, learning_rate_fn, label_smoothing)


def check_batch_size(batch_size: int, num_devices: int, what: str = "batch_size") -> None:
  if batch_size % num_devices or batch_size % jax.process_count():
    raise ValueError(f"{what}={batch_size} must be divisible by the number of devices ({num_devices}) "
                     f"and processes ({jax.process_count()}).")
