"""What a compiled step needs in device memory, and what a device has: one reading of XLA's
memory analysis, used by `resnet-jax bench` (reported) and by vectorised groups (how many members
fit on a device)."""

import os
from typing import Optional

import jax
import jax.numpy as jnp

from resnet_jax.training import parallel

# Share of a device's memory a group may plan to use (the rest: data, fragmentation, the runtime).
MEMORY_FRACTION = 0.8


def step_memory(compiled) -> Optional[dict]:
  """Bytes per device of a compiled step, if XLA reports them: temp, args, out, alias and peak
  (arguments + outputs + temporaries - aliased buffers)."""
  try:
    m = compiled.memory_analysis()
  except (NotImplementedError, AttributeError, RuntimeError):
    return None
  if m is None:
    return None
  if isinstance(m, (list, tuple)):  # pmap: one analysis per device; they are identical
    m = m[0]
  temp, args, out, alias = (getattr(m, f"{k}_size_in_bytes", 0)
                            for k in ("temp", "argument", "output", "alias"))
  return {"temp": temp, "args": args, "out": out, "alias": alias, "peak": temp + args + out - alias}


def device_memory_bytes(device) -> int:
  """A device's memory: the accelerator's limit, or the host's RAM shared by its CPU devices."""
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  # backends without stats raise various errors
    pass
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return total // max(1, len(jax.local_devices()))


# Members per group where the backend gives no memory estimate: a modest default, in README.
MEMBERS_WITHOUT_ESTIMATE = 8


def members_that_fit(trainer) -> int:
  """How many vectorised members fit on a device, from XLA's memory analysis of one member's step.

  A group's step needs about M times one member's arguments, outputs and temporaries (vmap stacks
  them); one compilation of the solo step (the trainer's model and optimizer, bound as a solo run
  binds them) buys the estimate. At least 1.
  """
  c = trainer.config
  solo = parallel.MeshJit(trainer.devices, parallel.config_step(trainer.model, c), trainer.model,
                          trainer.strategy.compiler_options)
  batch = {"image": jax.ShapeDtypeStruct((c.batch_size, *trainer.image_shape), jnp.float32),
           "label": jax.ShapeDtypeStruct((c.batch_size,), jnp.int32)}
  per_member = step_memory(solo.train_step.lower(trainer.abstract_state(), batch).compile())
  if not per_member or not per_member["peak"]:
    return MEMBERS_WITHOUT_ESTIMATE
  return max(1, int(MEMORY_FRACTION * device_memory_bytes(trainer.devices[0]) // per_member["peak"]))
