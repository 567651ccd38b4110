"""Fine-tuning: a new run's state seeded from another run's (or a conversion's) newest checkpoint.

Used by the trainer when `init_from` names a workdir and the run's own workdir holds no checkpoint
yet: the backbone's parameters and BN statistics come from there, the head too unless the class count
differs (or `init_new_head`), and the optimizer starts afresh.
"""

import sys
from typing import Any, Optional

from etils import epath
import jax

from resnet_jax import config as config_lib
from resnet_jax.models import stages
from resnet_jax.run import workdir as workdir_lib
from resnet_jax.run.errors import ConfigError, WorkdirError
from resnet_jax.training import checkpoints
from resnet_jax.training.step import TrainState


def seed_from(trainer, source: str, state: TrainState) -> TrainState:
  """`state` with params and batch_stats from `source`'s newest checkpoint, a fresh optimizer state,
  and its own (random) head where the class count differs or `init_new_head` asks for one."""
  config_path = epath.Path(source) / workdir_lib.CONFIG_FILE
  if not (config_path.exists() and (epath.Path(source) / workdir_lib.CHECKPOINTS_DIR).exists()):
    raise WorkdirError(f"init_from={source!r} is not the workdir of a run or of `resnet-jax convert` "
                       "(it needs config.json and checkpoints/).")
  theirs = config_lib.from_json(str(config_path))
  for key in ("model", "width_multiplier"):
    if theirs[key] != trainer.config[key]:
      raise ConfigError(f"init_from={source!r} holds a {key}={theirs[key]!r} network; this run has "
                       f"{key}={trainer.config[key]!r}. Set --config.{key}={theirs[key]} (only the "
                       "head may differ).")
  ckpt = checkpoints.Checkpointer(source)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise WorkdirError(f"init_from={source!r} has no checkpoint yet.")
    parts = ckpt.restore_parts(("params", "batch_stats"), trainer.strategy.state_sharding)
  finally:
    ckpt.close()
  fresh = {"params": state.params, "batch_stats": state.batch_stats}
  new_head = trainer.config.init_new_head or (
      _shape(parts["params"].get("head", {}).get("bias")) != _shape(state.params["head"]["bias"]))
  seeded = {}
  for part, tree in fresh.items():
    ours = stages.unstack_scanned(dict(tree))
    merged = _merge(ours, stages.unstack_scanned(dict(parts.get(part, {}))), source, (part,),
                    keep={"head"} if new_head else set())
    seeded[part] = stages.to_scanned(merged) if trainer.config.scan_blocks else merged
  if jax.process_index() == 0:
    head = f"a new head for {trainer.num_classes} classes" if new_head else "its head"
    print(f"init_from {source} (step {step}): backbone and BN statistics, {head}.", file=sys.stderr)
  return state.replace(params=seeded["params"], batch_stats=seeded["batch_stats"],
                       opt_state=trainer.tx.init(seeded["params"]))


def _shape(x) -> Optional[tuple]:
  shape = getattr(x, "shape", None)
  return None if shape is None else tuple(shape)


def _merge(ours: Any, theirs: Any, source: str, path: tuple, keep: set) -> Any:
  """`ours` with every leaf replaced by `theirs`' at the same path; top-level names in `keep` stay
  ours. The trees must match exactly otherwise: a missing, extra or differently shaped array means a
  different architecture, which is an error naming it."""
  if not isinstance(ours, dict):
    if not hasattr(theirs, "shape") or theirs.shape != ours.shape:
      raise ConfigError(f"init_from={source!r}: {'/'.join(path)} has shape {_shape(theirs)} there "
                        f"and {ours.shape} here; the architectures differ (only the head may).")
    return theirs
  names = set(ours) - (keep if len(path) == 1 else set())
  theirs = theirs if isinstance(theirs, dict) else {}
  missing = sorted(names - set(theirs))
  extra = sorted(set(theirs) - set(ours) - {"head"})
  if missing or extra:
    raise ConfigError(f"init_from={source!r}: {'/'.join(path)} differs: missing there {missing[:4]}, "
                      f"extra there {extra[:4]}; the architectures differ (only the head may).")
  return {k: ours[k] if k not in names else _merge(ours[k], theirs[k], source, path + (k,), keep)
          for k in ours}
