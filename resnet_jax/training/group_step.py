"""The compiled step of a vectorised group: one member's `train_step` under `jax.vmap`.

`GroupJit` is `parallel.MeshJit` over stacked members: the state's leading (member) axis is
replicated like a solo state, a batch [M, B, ...] is sharded on B, and per-member optimizer values
arrive as traced arguments, so each member's optimizer state has a solo run's tree.
"""

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax.data import on_device
from resnet_jax.training import optim, parallel
from resnet_jax.training import step as step_lib


class GroupJit(parallel.MeshJit):
  """MeshJit over stacked members: the state's leading (member) axis is replicated like a solo state,
  a batch [M, B, ...] is sharded on B, and the step is one member's `train_step` under `jax.vmap`."""

  def __init__(self, devices, model, config, compiler_options=None):
    if len(devices) > 1:
      # XLA:CPU's experimental YNNPACK fusions (`cpu_fusion`) reject the layout of the vmapped,
      # batch-sharded activations ("unsupported layout in YNN fusion", jaxlib 0.10.2, 8 devices).
      compiler_options = None
    super().__init__(devices, model, optim.create_optimizer(config),
                     optim.create_learning_rate_fn(config), config.label_smoothing, compiler_options)
    self.member_sharded = NamedSharding(self.mesh, P(None, parallel.AXIS))

    def member_step(state, batch, hparams):
      # The optimizer is built from this member's traced values: the same chain, so the same
      # opt_state tree, as a solo run's (its checkpoints restore as one).
      return step_lib.train_step(
          state, batch, model=model, tx=optim.create_optimizer(config, hparams),
          learning_rate_fn=optim.create_learning_rate_fn(config, hparams),
          label_smoothing=hparams["label_smoothing"])

    self._group_step = jax.vmap(member_step)
    self.train_step = self._jit(self._group_step,
                                in_shardings=(self.replicated, self.member_sharded, self.replicated),
                                out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    # The test batches are the same for every member: only the state is mapped.
    self.eval_step = self._jit(jax.vmap(functools.partial(step_lib.eval_step, model=model),
                                        in_axes=(0, None)),
                               in_shardings=(self.replicated, self.sharded),
                               out_shardings=self.replicated)

  def multi_step(self, k: int):
    """K steps of the group per dispatch; batches [K, M, B, ...], metrics [K, M]."""
    if ("group", k) not in self._compiled:
      def run(states, batches, hparams):
        return parallel._scan(self, lambda s, b: self._group_step(s, b, hparams), states, batches, k)  # pylint: disable=protected-access
      self._compiled["group", k] = self._jit(
          run, in_shardings=(self.replicated, NamedSharding(self.mesh, P(None, None, parallel.AXIS)),
                             self.replicated),
          out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    return self._compiled["group", k]

  def device_steps(self, k: int, batch_size: int, augment: str):  # pylint: disable=arguments-differ
    """K steps whose batches each member draws on device with its own seed."""
    key = ("group-device", k, batch_size, augment)
    if key not in self._compiled:
      def run(states, data, hparams, seeds):
        def body(states, _):
          batch = jax.vmap(lambda seed, step: on_device.sample_batch(data, seed, step, batch_size,
                                                                     augment))(seeds, states.step)
          batch = jax.lax.with_sharding_constraint(batch, self.member_sharded)
          return self._group_step(states, batch, hparams)
        return parallel._scan(self, body, states, None, k)  # pylint: disable=protected-access
      self._compiled[key] = self._jit(run, in_shardings=(self.replicated,) * 4,
                                      out_shardings=(self.replicated, self.replicated),
                                      donate_argnums=0)
    return self._compiled[key]

  def put_member_batches(self, batches: list[dict]):
    """One batch per member (this process's share) -> arrays [M, B, ...] sharded on B."""
    return {k: jax.make_array_from_process_local_data(self.member_sharded,
                                                      np.stack([b[k] for b in batches]))
            for k in batches[0]}

  def put_member_batch_steps(self, steps: list[list[dict]]):
    """K steps of one batch per member -> arrays [K, M, B, ...] sharded on B."""
    sharding = NamedSharding(self.mesh, P(None, None, parallel.AXIS))
    return {k: jax.make_array_from_process_local_data(
        sharding, np.stack([np.stack([b[k] for b in batches]) for batches in steps]))
            for k in steps[0][0]}
