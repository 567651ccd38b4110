"""Orbax checkpoints of the whole train state: save on a cadence, keep the newest few, resume.

The state is saved as a plain nested dict (flax.serialization), so a checkpoint does not depend on how
many devices wrote it: it restores onto any mesh, e.g. written on 8 devices, resumed on 4.
"""

import os
from typing import Any, Optional

import flax.serialization
import jax
import orbax.checkpoint as ocp

from resnet_jax import storage


def _key(entry) -> str:
  return str(getattr(entry, "key", getattr(entry, "name", entry)))


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` in `<workdir>/checkpoints`; saves are asynchronous."""

  def __init__(self, workdir: str, keep: int = 3):
    if keep < 1:
      raise ValueError(f"keep_checkpoints={keep} must be >= 1 (the newest checkpoint is what resumes).")
    # Orbax reads and writes bucket URLs (gs://...) directly; local paths must be absolute.
    self.directory = os.path.join(storage.absolute(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                           create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Starts an asynchronous save of `state` (host arrays or any sharding) at `step`."""
    return self.manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                             force=force)

  def restore(self, template: Any, sharding, step: Optional[int] = None) -> Any:
    """Restores the newest (or given) checkpoint into the structure of `template` on `sharding`."""
    step = self.latest_step() if step is None else step
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        flax.serialization.to_state_dict(template))
    try:
      restored = self.manager.restore(step, args=ocp.args.StandardRestore(target))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(
          f"the checkpoint at step {step} in {self.directory} does not match this configuration "
          f"(model, dataset or optimizer changed?). Use a new --workdir, or the original config. "
          f"Orbax said: {e}") from e
    return flax.serialization.from_state_dict(template, restored)

  def restore_parts(self, parts: tuple[str, ...], sharding, step: Optional[int] = None) -> dict:
    """Only the top-level `parts` (e.g. params, batch_stats) of a checkpoint, whatever its model.

    The structure comes from the checkpoint's own metadata, so no template is needed: this reads a
    run written under another config (init_from). The other parts are not read.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise ValueError(f"{self.directory} holds no checkpoint.")
    # PyTree handler: its partial_restore reads just the named parts; their structure comes from the
    # checkpoint's metadata, so no template of the other run's state is needed.
    reader = ocp.CheckpointManager(self.directory, item_handlers=ocp.PyTreeCheckpointHandler())
    try:
      tree = reader.item_metadata(step)
      tree = dict(getattr(tree, "tree", tree))  # TreeMetadata wraps the nested dict
      item = jax.tree_util.tree_map(
          lambda meta: jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=sharding),
          {k: tree[k] for k in parts if k in tree})
      restored = reader.restore(step, args=ocp.args.PyTreeRestore(
          item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
    finally:
      reader.close()
    return dict(restored)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
