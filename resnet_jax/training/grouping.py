"""Which sweep members may train as one vectorised group, and how groups are formed.

Members may differ only in VARYING: each becomes a traced, per-member argument of the step
(resnet_jax.training.group_step). Everything else shapes the computation and must be equal.
"""

import json
from typing import Optional

import jax
import ml_collections

from resnet_jax.run.errors import ConfigError
from resnet_jax.training import optim

# Keys whose values may differ within a group: each becomes a traced, per-member argument of the
# step. seed: initialisation, data order and augmentation; the others: the optimizer and the loss.
HPARAMS = optim.TRACEABLE + ("label_smoothing",)
VARYING = ("seed",) + HPARAMS
# Keys that change nothing the step computes: how groups are formed.
_GROUPING = ("vectorize", "vectorize_max_members")


def group_key(config: ml_collections.ConfigDict) -> str:
  """Equal for exactly the configs that can train in one group: all keys but VARYING agree."""
  values = config.to_dict()
  for key in VARYING + _GROUPING:
    values.pop(key, None)
  return json.dumps(values, sort_keys=True, default=str)


def unsupported(config: ml_collections.ConfigDict) -> Optional[str]:
  """Why `config` cannot join a vectorised group (it then runs alone), or None."""
  if config.parallelism != "jit":
    return (f"parallelism={config.parallelism!r}: a group is one jax.jit-compiled step over the "
            "device mesh (set parallelism='jit')")
  if config.init_from:
    return "init_from: a group starts every member from its own random initialisation"
  if jax.process_count() > 1:
    return "a multi-process run: groups train in one process"
  return None


def check_group(configs: list) -> None:
  """Raises ValueError naming the first key that keeps `configs` from training as one group."""
  if not configs:
    raise ConfigError("a vectorised group needs at least one member.")
  for config in configs:
    why = unsupported(config)
    if why:
      raise ConfigError(f"cannot vectorise this member: {why}.")
  base = configs[0].to_dict()
  for config in configs[1:]:
    for key, value in config.to_dict().items():
      if key not in VARYING + _GROUPING and value != base.get(key):
        raise ConfigError(
            f"members of a vectorised group may differ only in {', '.join(VARYING)}; these differ "
            f"in {key} ({base.get(key)!r} vs {value!r}). Run them in separate groups "
            "(`resnet-jax sweep --vectorize` groups compatible members itself).")


def plan_groups(configs: list, wanted: Optional[list] = None) -> list[list[int]]:
  """Member indices of each group, deterministic: compatible members in order of first appearance.

  A member that is not `wanted` or is `unsupported` is a group of its own. The memory cap is
  applied later, by `train_group`, which splits a group into chunks that fit.
  """
  groups: dict[str, list[int]] = {}
  singles = []
  for i, config in enumerate(configs):
    if (wanted is not None and not wanted[i]) or unsupported(config):
      singles.append([i])
      groups[f"single-{i}"] = singles[-1]
    else:
      groups.setdefault(group_key(config), []).append(i)
  return sorted(groups.values(), key=lambda g: g[0])
