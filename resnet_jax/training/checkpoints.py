"""Orbax checkpoints of the whole train state: save on a cadence, keep the newest few, resume.

The state is saved as a plain nested dict (flax.serialization), so a checkpoint does not depend on how
many devices wrote it: it restores onto any mesh, e.g. written on 8 devices, resumed on 4.

Resuming takes the newest checkpoint that restores. One that cannot be read (files truncated or
missing after a crash of the disk or the VM) is damaged: it is moved, never deleted, to
`<workdir>/damaged_checkpoints/` with a warning, and the one before it is tried. One whose metadata
reads but holds a different tree of arrays, or whose intact metadata this Orbax cannot interpret
(another version, another handler), is not damage: that is an error, and nothing is moved.
"""

import datetime
import errno
import json
import os
import warnings
from typing import Any, Optional

from etils import epath
import flax.serialization
import jax
import orbax.checkpoint as ocp

from resnet_jax.run import storage
from resnet_jax.run.errors import IncompatibleCheckpointError

DAMAGED_DIR = "damaged_checkpoints"
ITEM = "default"           # the folder Orbax keeps a step's single item in
METADATA_FILE = "_METADATA"  # its tree of names, shapes and dtypes (JSON)


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` in `<workdir>/checkpoints`; saves are asynchronous."""

  def __init__(self, workdir: str, keep: int = 3):
    if keep < 1:  # validated for a run; a guard for direct use
      raise ValueError(f"keep_checkpoints={keep} must be >= 1 (the newest checkpoint is what resumes).")
    # Orbax reads and writes bucket URLs (gs://...) directly; local paths must be absolute.
    self.workdir = storage.absolute(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                           create=True)
    # Naming the item's handler lets `item_metadata` read a step's tree without restoring it.
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Starts an asynchronous save of `state` (host arrays or any sharding) at `step`."""
    return self.manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                             force=force)

  def restore(self, template: Any, sharding, step: Optional[int] = None) -> Any:
    """Restores the newest (or given) checkpoint into the structure of `template` on `sharding`.

    Raises IncompatibleCheckpointError if the checkpoint holds another tree of arrays, and any other
    exception if it cannot be read.
    """
    step = self.latest_step() if step is None else step
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        flax.serialization.to_state_dict(template))
    self._check_compatible(step, target)
    restored = self.manager.restore(step, args=ocp.args.StandardRestore(target))
    return flax.serialization.from_state_dict(template, restored)

  def restore_newest_valid(self, template: Any, sharding) -> tuple[Any, Optional[int]]:
    """(state, step) from the newest checkpoint that restores; (None, None) if there is none.

    Damaged checkpoints met on the way are moved aside with a warning naming them.
    """
    for step in reversed(self.all_steps()):
      try:
        return self.restore(template, sharding, step), step
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except  # any read error means damage
        moved = self._move_aside(step)
        warnings.warn(f"the checkpoint at step {step} is damaged and cannot be restored "
                      f"({type(e).__name__}: {_first_line(e)}); moved it to {moved} (not deleted) "
                      "and resuming from the one before it.", stacklevel=2)
    return None, None

  def _check_compatible(self, step: int, target) -> None:
    """Compares the checkpoint's stored tree (names and shapes) with `target`.

    Metadata that is missing, cut short or not JSON is damage, which the restore then finds; intact
    JSON that Orbax cannot read as a tree was written by something else, which is refused.
    """
    try:
      stored = self.manager.item_metadata(step)
    except Exception as e:  # pylint: disable=broad-except  # Orbax raises many types
      if self._metadata_is_intact(step):
        raise IncompatibleCheckpointError(
            f"the checkpoint at step {step} in {self.directory} has metadata this version of Orbax "
            f"cannot read ({type(e).__name__}: {_first_line(e)}): it was written by another version "
            "or tool, so it is not treated as damaged and nothing was moved. Resume with the version "
            "that wrote it, or use a new --workdir.") from None
      return
    stored = getattr(stored, "tree", stored)
    if not stored:
      return  # no metadata file; the restore itself will tell
    have = _shapes(stored)
    want = _shapes(target)
    if have and have != want:
      missing = sorted(set(want) - set(have))[:3]
      extra = sorted(set(have) - set(want))[:3]
      reshaped = sorted(k for k in set(have) & set(want) if have[k] != want[k])[:3]
      detail = "; ".join(f"{what}: {', '.join(keys)}" for what, keys in (
          ("missing", missing), ("unexpected", extra), ("other shapes", reshaped)) if keys)
      raise IncompatibleCheckpointError(
          f"the checkpoint at step {step} in {self.directory} was written by another configuration "
          f"(its arrays differ: {detail}). Use a new --workdir, or the config that wrote it "
          "(config.json and config_history.jsonl in the workdir); nothing was changed.")

  def _metadata_is_intact(self, step: int) -> bool:
    path = epath.Path(self.directory) / str(step) / ITEM / METADATA_FILE
    try:
      json.loads(path.read_text())
    except (OSError, ValueError):  # missing, unreadable, cut short: damage
      return False
    return True

  def _move_aside(self, step: int) -> str:
    src = epath.Path(self.directory) / str(step)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    dst = epath.Path(self.workdir) / DAMAGED_DIR / f"{step}-{stamp}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.rename(dst)
    self.manager.reload()  # forget the moved step
    return str(dst)

  def restore_parts(self, parts: tuple[str, ...], sharding, step: Optional[int] = None) -> dict:
    """Only the top-level `parts` (e.g. params, batch_stats) of a checkpoint, whatever its model.

    The structure comes from the checkpoint's own metadata, so no template is needed: this reads a
    run written under another config (init_from). The other parts are not read.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise IncompatibleCheckpointError(f"{self.directory} holds no checkpoint.")
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


def _shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict))
  return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in leaves if hasattr(x, "shape")}


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0][:200] if text else ""


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or anything in its chain, is 'No space left on device' (ENOSPC)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or (
        "No space left on device" in str(error)):  # Orbax and TensorStore re-raise it as text
      return True
    error = error.__cause__ or error.__context__
  return False
