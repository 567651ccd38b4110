"""The compiled step of a vectorised group: one member's `train_step` under `jax.vmap`.

`GroupJit` is `parallel.MeshJit` over stacked members: the state's leading (member) axis is
replicated like a solo state, a batch [M, B, ...] is sharded on B, and each member's optimizer values
(`grouping.HPARAMS`) and seed arrive as traced arguments, bound per segment by `bind_members`, so each
member's optimizer state has a solo run's tree and one program serves any values.
"""

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax.data import EvalLayout, on_device
from resnet_jax.training import parallel, xla_cpu
from resnet_jax.training import step as step_lib
from resnet_jax.training.grouping import HPARAMS


class GroupJit(parallel.MeshJit):
  """MeshJit over stacked members: one member's step, bound from its traced values, under vmap."""

  def __init__(self, devices, model, config, compiler_options=None, platform=None, *,
               eval_layout: EvalLayout = EvalLayout()):
    if len(devices) > 1:
      # XLA:CPU's experimental YNNPACK fusions (`cpu_fusion`) reject the layout of the vmapped,
      # batch-sharded activations ("unsupported layout in YNN fusion", jaxlib 0.10.2, 8 devices).
      compiler_options = None

    def member_step(state, batch, hparams):
      # The optimizer is built from this member's traced values: the same chain, so the same
      # opt_state tree, as a solo run's (its checkpoints restore as one).
      return parallel.config_step(model, config, hparams)(state, batch)

    self._group_step = jax.vmap(member_step)
    super().__init__(devices, self._group_step, model, compiler_options, platform,
                     eval_layout=eval_layout)
    self.member_sharded = NamedSharding(self.mesh, P(None, parallel.AXIS))
    # (states, batch, hparams) -> (states, metrics): what `train_step` calls with the bound values.
    self.jitted_train_step = self._jit(
        self._group_step, in_shardings=(self.replicated, self.member_sharded, self.replicated),
        out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    self.train_step = Bound(self.jitted_train_step, lambda: (self.hparams,))
    # The test batches are the same for every member: only the state is mapped.
    self.eval_step = self._jit(jax.vmap(functools.partial(step_lib.eval_step, model=model,
                                                          layout=eval_layout),
                                        in_axes=(0, None)),
                               in_shardings=(self.replicated, self.sharded),
                               out_shardings=self.replicated)
    self.hparams = self.seeds = None

  def bind_members(self, configs: list) -> None:
    """Each member's optimizer values and seed, on the devices, for the dispatches that follow."""
    self.hparams = self.put_state({k: np.asarray([c[k] for c in configs], np.float32) for k in HPARAMS})
    self.seeds = self.put_state(np.asarray([int(c.seed) for c in configs], np.int32))

  def multi_step(self, k: int):
    """K steps of the group per dispatch; batches [K, M, B, ...], metrics [K, M]."""
    if ("group", k) not in self._compiled:
      def run(states, batches, hparams):
        return xla_cpu.scan(self, lambda s, b: self._group_step(s, b, hparams), states, batches, k)
      self._compiled["group", k] = self._jit(
          run, in_shardings=(self.replicated, NamedSharding(self.mesh, P(None, None, parallel.AXIS)),
                             self.replicated),
          out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    compiled = self._compiled["group", k]
    return Bound(compiled, lambda: (self.hparams,))

  def device_steps(self, k: int, batch_size: int, augment: str):
    """K steps whose batches each member draws on device with its own seed."""
    key = ("group-device", k, batch_size, augment)
    if key not in self._compiled:
      def run(states, data, hparams, seeds):
        def body(states, _):
          batch = jax.vmap(lambda seed, step: on_device.sample_batch(data, seed, step, batch_size,
                                                                     augment))(seeds, states.step)
          batch = jax.lax.with_sharding_constraint(batch, self.member_sharded)
          return self._group_step(states, batch, hparams)
        return xla_cpu.scan(self, body, states, None, k)
      self._compiled[key] = self._jit(run, in_shardings=(self.replicated,) * 4,
                                      out_shardings=(self.replicated, self.replicated),
                                      donate_argnums=0)
    compiled = self._compiled[key]
    return Bound(compiled, lambda: (self.hparams, self.seeds))

  def stack(self, states: list):
    """Members' states (global or host arrays) -> one host tree with a leading member axis."""
    def host(x):
      return np.asarray(jax.device_get(x.addressable_data(0) if isinstance(x, jax.Array) else x))
    return jax.tree_util.tree_map(lambda *xs: np.stack([host(x) for x in xs]), *states)

  def member_state(self, state, i: int = 0):
    return jax.tree_util.tree_map(lambda x: x[i], state)

  def member_values(self, fetched, i: int = 0):
    """Member i's values of fetched outputs: per metric [M], or [K, M] from K steps per dispatch."""
    return jax.tree_util.tree_map(lambda v: v[..., i], fetched)

  def put_batch(self, member_batches: list[dict]):
    """One batch per member (this process's share) -> arrays [M, B, ...] sharded on B."""
    return {k: jax.make_array_from_process_local_data(self.member_sharded,
                                                      np.stack([b[k] for b in member_batches]))
            for k in member_batches[0]}

  def put_batches(self, steps: list[list[dict]]):
    """K steps of one batch per member -> arrays [K, M, B, ...] sharded on B."""
    sharding = NamedSharding(self.mesh, P(None, None, parallel.AXIS))
    return {k: jax.make_array_from_process_local_data(
        sharding, np.stack([np.stack([b[k] for b in batches]) for batches in steps]))
            for k in steps[0][0]}


class Bound:
  """A jitted function with its last arguments (the members' values, read at each call) bound; it
  lowers as well as it calls, so the loop can read the compiled step's FLOPs (`goodput`)."""

  def __init__(self, jitted, extra):
    self.jitted, self.extra = jitted, extra

  def __call__(self, *args):
    return self.jitted(*args, *self.extra())

  def lower(self, *args):
    return self.jitted.lower(*args, *self.extra())
