"""Orbax checkpoints of the whole train state: save on a cadence, keep the newest few, resume.

The state is saved as a plain nested dict (flax.serialization), so a checkpoint does not depend on how
many devices wrote it: it restores onto any mesh, e.g. written on 8 devices, resumed on 4.

Resuming takes the newest checkpoint that restores, and acts only on what is proven (STYLE.md,
principle 16). A checkpoint is damaged only when its own files show it: its item folder or metadata
missing, metadata that is not JSON, or files missing or of another size than when its save committed
(each committed step's file sizes are recorded in `<workdir>/checkpoint_files.json`). Only then is it
moved, never deleted, to `<workdir>/damaged_checkpoints/` with a warning, and the one before it
tried. A restore that fails for a transient reason (a timeout, a reset connection, a 429 or 5xx from
the bucket) is retried with backoff, then ends the run with `StorageUnavailableError` (exit 75:
restart me); any other failure keeps its traceback. Neither moves anything. A checkpoint whose
metadata reads but holds another tree of arrays, or whose intact metadata this Orbax cannot
interpret, is refused (`IncompatibleCheckpointError`), and nothing is moved either.
"""

import datetime
import json
import os
import time
import warnings
from typing import Any, Optional

from etils import epath
import flax.serialization
import jax
import orbax.checkpoint as ocp

from resnet_jax.run import storage
from resnet_jax.run.workdir import CHECKPOINT_SIZES_FILE, CHECKPOINTS_DIR, DAMAGED_DIR
from resnet_jax.run.errors import IncompatibleCheckpointError, StorageUnavailableError

ITEM = "default"           # the folder Orbax keeps a step's single item in
METADATA_FILE = "_METADATA"  # its tree of names, shapes and dtypes (JSON)
# Restores retried after a transient failure, and the first wait (seconds; doubled each time).
RESTORE_ATTEMPTS, RESTORE_BACKOFF_S = 4, 1.0


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` in `<workdir>/checkpoints`; saves are asynchronous."""

  def __init__(self, workdir: str, keep: int = 3):
    if keep < 1:  # validated for a run; a guard for direct use
      raise ValueError(f"keep_checkpoints={keep} must be >= 1 (the newest checkpoint is what resumes).")
    # Orbax reads and writes bucket URLs (gs://...) directly; local paths must be absolute.
    self.workdir = storage.absolute(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINTS_DIR)
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
    self.record_committed()  # the saves committed since the last call, before the next one starts
    return self.manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                             force=force)

  def record_committed(self) -> None:
    """Records the file sizes of every committed step not recorded yet (process 0 only).

    Orbax lists a step only once its save has committed (atomically renamed locally, its commit
    marker written in a bucket), so what is recorded is what a good checkpoint holds; steps Orbax
    has since deleted (max_to_keep) are dropped from the record.
    """
    if jax.process_index() != 0:
      return
    steps = self.all_steps()
    record = self._read_sizes()
    missing = [s for s in steps if str(s) not in record]
    if not missing and set(record) == {str(s) for s in steps}:
      return
    record = {k: v for k, v in record.items() if int(k) in steps}
    for step in missing:
      if not storage.exists(epath.Path(self.directory) / str(step)):
        continue  # listed by a manager whose save then failed (a refused write): nothing to record
      record[str(step)] = storage.retrying(f"listing checkpoint {step}", _file_sizes,
                                           epath.Path(self.directory) / str(step))
    storage.write_atomic(epath.Path(self.workdir) / CHECKPOINT_SIZES_FILE,
                         json.dumps(record, sort_keys=True))

  def _read_sizes(self) -> dict:
    path = epath.Path(self.workdir) / CHECKPOINT_SIZES_FILE
    try:
      return json.loads(storage.read_text(path)) if storage.exists(path) else {}
    except ValueError:  # a torn record proves nothing about the checkpoints: start it again
      return {}

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

    A checkpoint that fails to restore is moved aside (with a warning naming it) only when its own
    files prove it damaged; then the one before it is tried. Otherwise nothing moves: a transient
    failure that outlasts the retries raises StorageUnavailableError, anything else re-raises with
    a note (a bug, or damage this cannot prove: its traceback is the evidence).
    """
    for step in reversed(self.all_steps()):
      try:
        return self._restore_retrying(template, sharding, step), step
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except  # sorted below: damage, transient, other
        # The proof is read from storage too: a transient error there ends in StorageUnavailableError.
        proof = storage.retrying(f"checking the files of checkpoint {step}", self.damage, step)
        if proof is None:
          if storage.is_transient(e):
            raise StorageUnavailableError(
                f"the storage holding {self.directory} failed while restoring step {step} "
                f"({type(e).__name__}: {_first_line(e)}) and kept failing over "
                f"{RESTORE_ATTEMPTS} attempts; nothing was moved or deleted. Re-run the same command "
                "to resume when it answers again.") from e
          e.add_note(f"resnet-jax: the checkpoint at step {step} in {self.directory} could not be "
                     "restored, but its files show no damage, so nothing was moved. If it is damaged, "
                     "move that step's folder aside by hand and re-run to resume from the one before.")
          raise
        moved = self._move_aside(step)
        warnings.warn(f"the checkpoint at step {step} is damaged and cannot be restored ({proof}; "
                      f"the restore raised {type(e).__name__}: {_first_line(e)}); moved it to {moved} "
                      "(not deleted) and resuming from the one before it.", stacklevel=2)
    return None, None

  def _restore_retrying(self, template: Any, sharding, step: int) -> Any:
    wait = RESTORE_BACKOFF_S
    for attempt in range(RESTORE_ATTEMPTS):
      try:
        return self.restore(template, sharding, step)
      except Exception as e:  # pylint: disable=broad-except  # only transient errors are retried
        if attempt == RESTORE_ATTEMPTS - 1 or not storage.is_transient(e) or self.damage(step):
          raise
        time.sleep(wait)
        wait *= 2
    raise AssertionError("unreachable")

  def damage(self, step: int) -> Optional[str]:
    """What the step's own files show is wrong with it, in words; None when they show nothing."""
    root = epath.Path(self.directory) / str(step)
    item = root / ITEM
    if not item.exists():
      return f"its {ITEM}/ folder is missing"
    if not (item / METADATA_FILE).exists():
      return f"its {ITEM}/{METADATA_FILE} file is missing"
    if not self._metadata_is_intact(step):
      return f"its {ITEM}/{METADATA_FILE} file is not valid JSON (cut short?)"
    recorded = self._read_sizes().get(str(step))
    actual = _file_sizes(root)
    if recorded is None:  # committed, then the process died before recording it: less to go on
      empty = sorted(name for name, size in actual.items() if size == 0)
      return f"{len(empty)} of its files are empty ({empty[0]}, ...)" if empty else None
    missing = sorted(set(recorded) - set(actual))
    if missing:
      return f"{len(missing)} of its {len(recorded)} files are missing ({missing[0]}, ...)"
    changed = sorted(k for k in recorded if actual[k] != recorded[k])
    if changed:
      k = changed[0]
      return (f"{len(changed)} of its files changed size since the save committed ({k}: "
              f"{recorded[k]} -> {actual[k]} bytes, ...)")
    return None

  def _check_compatible(self, step: int, target) -> None:
    """Compares the checkpoint's stored tree (names and shapes) with `target`.

    Metadata that Orbax cannot read is damage when the step's files show it (`damage`), which the
    restore then finds; intact files that Orbax cannot read as a tree were written by something
    else, which is refused. A transient read error decides nothing: it propagates to the retries.
    """
    try:
      stored = self.manager.item_metadata(step)
    except Exception as e:  # pylint: disable=broad-except  # Orbax raises many types
      if storage.is_transient(e):
        raise  # not a verdict on the metadata: the restore's retries and diagnosis take it
      if self.damage(step) is None:  # intact files that this Orbax cannot read: another writer
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
    except FileNotFoundError:
      return False
    except ValueError:  # cut short or overwritten: damage
      return False
    return True  # a transient read error propagates: it proves nothing either way

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
    self.record_committed()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.record_committed()
    self.manager.close()


def _file_sizes(root: epath.Path) -> dict[str, int]:
  """{path relative to `root`: bytes} of every file under `root` (a few listings in a bucket).

  Folder by folder with `iterdir`, which keeps a bucket's gs:// prefix (epath's `walk` gives bucket
  objects' bare names).
  """
  sizes, todo, prefix = {}, [root], len(str(root).rstrip("/")) + 1
  while todo:
    for path in todo.pop().iterdir():
      if path.is_dir():
        todo.append(path)
      else:
        sizes[str(path)[prefix:]] = path.stat().length
  return sizes


def _shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict))
  return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in leaves if hasattr(x, "shape")}


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0][:200] if text else ""
