"""A run's lifecycle around the loop: its workdir while it trains, and how it stops.

`RunFiles` is one run's workdir, used as a context by every run, solo or vectorised member:

  with RunFiles(config, workdir) as run:   # writable? locked; may this config resume it?
    state, step = run.restore(template, sharding)   # the newest checkpoint that restores
    run.start(trainer, step)                        # config.json, its history, model.json, the log
    ...                                             # run.save(step, state), run.log.write(rows)
  # leaving: waits for the last save and closes the log; a full disk becomes DiskFullError naming
  # the last good checkpoint; nothing is deleted, whatever happened.

`StopFlag` turns SIGTERM, or a first Ctrl-C, into a step at which every process stops and saves;
its signal handler only records the request (the loop speaks), so a signal never waits on a lock.
"""

import contextlib
import json
import os
import shutil
import signal
from typing import Any, Optional

from etils import epath
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from resnet_jax import config as config_lib
from resnet_jax.config import resume
from resnet_jax.models import flops
from resnet_jax.run import metrics_log, storage
from resnet_jax.run import workdir as workdir_lib
from resnet_jax.run.errors import DiskFullError, StorageUnavailableError, WorkdirError
from resnet_jax.training import checkpoints


class RunFiles:
  """One run's workdir while it trains: lock, resume check, checkpoints, run files, metrics log."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, str(workdir)
    self.lead = jax.process_index() == 0  # the one process that writes files other than checkpoints
    self.ckpt: Optional[checkpoints.Checkpointer] = None
    self.log: Optional[metrics_log.MetricsLog] = None
    self._lock = None
    self._created = False

  def __enter__(self) -> "RunFiles":
    # A local workdir this run makes is removed again if it fails before writing anything (a
    # bucket has no empty folders to leave behind, and is touched only through retried calls).
    self._created = not storage.is_remote(self.workdir) and not os.path.exists(self.workdir)
    workdir_lib.check_writable(self.workdir)
    if self.lead:
      self._lock = workdir_lib.Lock(self.workdir)
      self._lock.__enter__()
    try:
      check_resumable(self.config, self.workdir)  # again, now that no one else can write there
      self.ckpt = checkpoints.Checkpointer(self.workdir, keep=self.config.keep_checkpoints)
    except BaseException:
      self._release()
      raise
    return self

  def restore(self, template, sharding) -> tuple[Any, int]:
    """(state, step) of the newest checkpoint that restores, or (None, 0); damaged ones move aside."""
    state, step = self.ckpt.restore_newest_valid(template, sharding)
    return state, (0 if step is None else step)

  def start(self, trainer, step: int) -> list[dict]:
    """Writes the run files and opens the metrics log at `step`; returns the rows logged so far."""
    if not self.lead:
      return []
    self.record(trainer, step)
    self.log = metrics_log.MetricsLog(self.workdir, step)
    return metrics_log.read_metrics(self.workdir)

  def record(self, trainer, step: int) -> None:
    """Writes config.json (appending it to the history, from `step`) and model.json."""
    if not self.lead:
      return
    workdir_lib.record_config(self.workdir, self.config, step)
    storage.write_atomic(epath.Path(self.workdir) / workdir_lib.MODEL_FILE, json.dumps(
        {"model": self.config.model, "image_shape": list(trainer.image_shape),
         **flops.profile(trainer.model, trainer.image_shape[0], trainer.image_shape[-1])}))

  def save(self, step: int, state) -> None:
    """Starts an asynchronous save; makes every row logged so far durable with it."""
    with self._transient_saves():
      self.ckpt.save(step, state, force=True)  # waits for the previous save: its error surfaces here
    if self.log is not None:
      self.log.flush()  # the rows up to a checkpoint must outlive the run (gs:// uploads lazily)

  def wait(self) -> None:
    with self._transient_saves():
      self.ckpt.wait()  # an asynchronous save's error (e.g. a full disk) surfaces here

  @contextlib.contextmanager
  def _transient_saves(self):
    """Raises a background save's transient storage error as `_unavailable`'s exit 75; any other
    error as it is."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  # sorted by is_transient
      unavailable = self._unavailable(e)
      if unavailable is None:
        raise
      raise unavailable from e

  def _unavailable(self, error: Exception) -> Optional[StorageUnavailableError]:
    """A background save that failed transiently (Orbax retries none of its uploads: a lost
    resumable upload, a 503 past gcsfs's retries) becomes StorageUnavailableError, exit 75: the
    same command resumes from the last committed checkpoint. None for any other error."""
    if not storage.is_transient(error) or storage.refusal(error):
      return None
    try:
      self.ckpt.wait()  # a save still in flight may yet commit: the message must name it if it does
    except Exception:  # pylint: disable=broad-except  # it failed too (the same fault, most likely)
      pass
    try:  # Orbax lists only committed steps (in a bucket the failed step's folder exists, half)
      self.ckpt.manager.reload()
      committed = self.ckpt.all_steps()
    except Exception:  # pylint: disable=broad-except  # the storage may still be away
      committed = None
    last = ("the last committed checkpoint could not be listed" if committed is None else
            f"the last committed checkpoint is step {committed[-1]}" if committed else
            "no checkpoint was committed yet")
    first = str(error).splitlines()[0][:200] if str(error) else ""
    return StorageUnavailableError(
        f"a checkpoint save to {self.ckpt.directory} failed with a transient storage error "
        f"({type(error).__name__}: {first}); {last}, and nothing was moved or deleted. Run the "
        "same command again to resume (exit 75: restart me).")

  def write_goodput(self, summary: dict) -> None:
    """Writes this process's wall time by phase and goodput (`training.goodput`) beside the log."""
    if self.lead:
      storage.write_atomic(epath.Path(self.workdir) / workdir_lib.GOODPUT_FILE,
                           json.dumps(summary, indent=2))

  def __exit__(self, exc_type, exc, tb):
    aborted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
    try:
      # A second Ctrl-C waits for nothing. After another error, an error while closing (the same
      # full disk, say) must not hide the one on its way up.
      with self._transient_saves():
        _close(None if aborted else self.ckpt, self.log, quiet=exc_type is not None)
    except Exception as e:  # pylint: disable=broad-except  # raised only when nothing failed before
      if storage.refusal(e):  # _unavailable leaves refusals (a full disk) alone
        raise self.disk_full(e) from e
      raise
    finally:
      self._release()
      if exc_type is not None and self._created and self.log is None:
        _remove_skeleton(self.workdir)  # failed before writing anything: leave no empty workdir
    if exc is not None and not isinstance(exc, DiskFullError) and storage.refusal(exc):
      raise self.disk_full(exc) from exc
    return False

  def _release(self) -> None:
    if self._lock is not None:
      self._lock.__exit__(None, None, None)
      self._lock = None

  def disk_full(self, error: BaseException) -> DiskFullError:
    """The error a refused write becomes: the path, why, the free space, the last good checkpoint."""
    free = ""
    if not storage.is_remote(self.workdir):
      free = f" ({shutil.disk_usage(self.workdir).free / 2**20:.1f} MiB free there)"
    try:
      self.ckpt.wait()  # a save still in flight may yet complete: the message must name it if it does
    except Exception:  # pylint: disable=broad-except  # it failed too: the refusal is the news
      pass
    committed = sorted(int(p.name) for p in epath.Path(self.ckpt.directory).iterdir()
                       if p.name.isdigit())
    last = (f"The last good checkpoint is step {committed[-1]} in {self.ckpt.directory}"
            if committed else "No checkpoint was completed")
    why = storage.refusal(error) or "is full"
    return DiskFullError(f"the disk holding {self.workdir} {why}{free}: a checkpoint or metrics "
                         f"write failed. {last}; nothing was deleted. Free some space (or give "
                         "keep_checkpoints a smaller value) and re-run the same command to resume.")


def _remove_skeleton(workdir: str) -> None:
  """Removes a workdir this run created if it holds only what opening it made (the lock file and an
  empty checkpoints folder); anything else in it is left alone."""
  if storage.is_remote(workdir):
    return  # a bucket has no empty folders to leave behind
  skeleton = {workdir_lib.LOCK_FILE, workdir_lib.CHECKPOINTS_DIR}
  checkpoints_dir = os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR)
  if set(os.listdir(workdir)) <= skeleton and not (os.path.isdir(checkpoints_dir)
                                                   and os.listdir(checkpoints_dir)):
    shutil.rmtree(workdir, ignore_errors=True)


def preflight(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Whether `config` may run in `workdir`, checked without taking it: the workdir is writable and
  holds no run this config may not resume. Raises WorkdirError; called before any data is read."""
  workdir_lib.check_writable(workdir)
  check_resumable(config, workdir)


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  saved = workdir_lib.read_config(workdir)
  changed = resume.changed_keys(saved, config) if saved is not None else []
  if changed:
    raise WorkdirError(_resume_refusal(workdir, saved, config, changed))


def _resume_refusal(workdir: str, saved: dict, config, changed: list[str]) -> str:
  old = config_lib.from_dict(saved)  # keys added since it was written: their defaults
  diff = ", ".join(f"{k}: {old[k]!r} -> {config[k]!r}" for k in changed)
  return (f"{workdir} holds a run with a different {diff}. Resuming under these values would change "
          "what the run computes, so its checkpoints cannot continue it. Use a new --workdir, or "
          f"resume with the original values ({workdir_lib.CONFIG_FILE} there). Keys that may change "
          f"on resume: {', '.join(resume.CHANGEABLE_ON_RESUME)}.")


def _close(ckpt, log, quiet: bool) -> None:
  """Waits for the last checkpoint to commit and closes the log; with `quiet`, errors are dropped."""
  for close in (ckpt.close if ckpt else None, log.close if log else None):
    if close is None:
      continue
    try:
      close()
    except Exception:  # pylint: disable=broad-except
      if not quiet:
        raise


class StopFlag:
  """Turns SIGTERM, or a first Ctrl-C, into a step at which every process stops (finish, save, exit).

  A single process sets a flag from a Python signal handler; a second Ctrl-C raises
  KeyboardInterrupt at once. Processes of a `jax.distributed` run must all stop at the same step even
  if only one of them got SIGTERM, or the collective save would hang: there JAX's preemption service
  (started by `jax.distributed.initialize`) catches SIGTERM and agrees on a step through the
  coordination service, in a background thread. The loop's check is a local read, so nothing is
  synchronised on the steps before a signal arrives.
  """

  def __init__(self, say):
    self.say = say
    self.requested, self.reason, self._announced = False, "", False

  def __enter__(self):
    # JAX's service installs its own SIGTERM handler; a Python one would replace it.
    self._distributed = jax.distributed.is_initialized()
    self._old = {}
    if not self._distributed:
      self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
      self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    # Only records the request: the handler runs between two bytecodes of the main thread, which
    # may be inside the console's (non-reentrant) lock, so saying anything here could deadlock.
    # `reached`, called by the loop after each dispatch, says it.
    del frame
    if signum == signal.SIGINT and self.requested:
      signal.signal(signal.SIGINT, self._old[signal.SIGINT])
      raise KeyboardInterrupt
    if not self.requested:
      self.reason = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    self.requested = True

  def _announce(self) -> None:
    if self.requested and not self._announced:
      self._announced = True
      hint = " (press Ctrl-C again to stop at once, without saving)" if self.reason == "Ctrl-C" else ""
      self.say(f"{self.reason}: finishing the current step, then saving a checkpoint{hint}")

  def reached(self, step: int, steps: int = 1) -> bool:
    """Whether to stop after the dispatch that ran `steps` steps up to `step`; call after each one.

    JAX's sync point is one step number (the fastest process's latest plus one), so every step
    number of the dispatch is offered to it: all processes meet it in the same dispatch.
    """
    if self._distributed:
      for s in range(step - steps + 1, step + 1):
        if multihost_utils.reached_preemption_sync_point(s):
          self.requested, self.reason = True, self.reason or "SIGTERM"
    self._announce()
    return self.requested

  def __exit__(self, *exc):
    for signum, handler in self._old.items():
      signal.signal(signum, handler)


def host_int(x) -> int:
  """A replicated scalar's value. On a multi-process mesh it is not fully addressable (device_get
  refuses it), but every process holds a whole copy: read the local one."""
  return int(np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x))
