"""Which config changes a resumed run may make: those in CHANGEABLE_ON_RESUME (where things are, how
often the host looks, how the same arithmetic is laid out), never one that changes what it computes.
"""

import ml_collections

from resnet_jax.config.defaults import CHANGEABLE_ON_RESUME
from resnet_jax.config.files import from_dict

# Schedules whose shape total_steps sets: they decay to 0 at the last step.
_LENGTH_SHAPED = ("cosine", "linear")


def changed_keys(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """The keys a run resumed under `config` would change from the `saved` config.json's values."""
  old = from_dict(saved)
  changed = [k for k in config.keys() if k not in CHANGEABLE_ON_RESUME and k in old
             and _normal(old[k]) != _normal(config[k])]
  if (config.lr_schedule in _LENGTH_SHAPED and "total_steps" not in changed
      and old.total_steps != config.total_steps):
    changed.append("total_steps")
  return changed


def _normal(value):
  return list(value) if isinstance(value, tuple) else value
