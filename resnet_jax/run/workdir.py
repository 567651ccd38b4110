"""A run's workdir: its layout, one writer at a time, writable before anything starts, a config history.

- The layout: every file and folder a run (or a sweep, or `convert`) writes in a workdir is named
  here, once, and read through here (`read_config`, `read_model`, `is_run`); the other modules
  import these names.

- `Lock`: an exclusive `flock` on `<workdir>/.lock`, held for the whole run. The kernel releases it
  when the process dies, even by kill -9, so a lock is never stale; the file names the holder (pid,
  host, command, start time) for the error a second writer gets. Bucket workdirs (gs://) have no
  locks: there the lock is skipped with a warning, and running one job per workdir is up to you.
- `check_writable`: the workdir can be created and written, checked before any compilation; the
  error says why not (does not exist, is a file, is read-only, no space left).
- `read_config` / `record_config`: each segment's resolved config is appended to
  `config_history.jsonl` and `config.json` holds the newest, so what produced a checkpoint is never
  lost (which keys a resume may change is the config's business: `resnet_jax.config.resume`).
"""

import datetime
import errno
import json
import os
import socket
import sys
import warnings

from etils import epath

from resnet_jax.run import storage
from resnet_jax.run.errors import WorkdirError, WorkdirInUseError

# --- The layout of a run's workdir. ---
LOCK_FILE = ".lock"                       # the writer's flock, naming it
CONFIG_FILE = "config.json"               # the resolved config of the newest segment
HISTORY_FILE = "config_history.jsonl"     # every segment's config, with its first step
MODEL_FILE = "model.json"                 # the model's name, input shape, parameters and FLOPs
METRICS_FILE = "metrics.jsonl"            # one JSON row per step
TORN_FILE = METRICS_FILE + ".torn"        # lines cut short by a crash, kept aside
SUPERSEDED_FILE = METRICS_FILE + ".superseded"  # rows past a resumed step, recomputed, kept aside
TENSORBOARD_DIR = "tensorboard"           # TensorBoard event files
CHECKPOINTS_DIR = "checkpoints"           # Orbax's: one folder per step
CHECKPOINT_SIZES_FILE = "checkpoint_files.json"  # each committed step's file sizes: damage's proof
DAMAGED_DIR = "damaged_checkpoints"       # checkpoints proven damaged, moved here, never deleted
STATUS_FILE = "status.json"               # a sweep member's: done (wall time) or failed (error)
GOODPUT_FILE = "goodput.json"             # the last segment's wall time by phase and goodput
PROFILE_DIR = "profile"                   # JAX profiler traces of `profile_steps` (TensorBoard, Perfetto)
# A sweep's (or `report`'s) folder: the tables of every run under it.
SUMMARY_CSV, SUMMARY_MD = "summary.csv", "summary.md"
# Folders of a run that hold no runs (`report` does not descend into them).
RUN_SUBDIRS = (TENSORBOARD_DIR, CHECKPOINTS_DIR, DAMAGED_DIR, PROFILE_DIR)


def is_run(names) -> bool:
  """Whether a folder holding the files `names` is a run's (it wrote its config and metrics)."""
  return CONFIG_FILE in names and METRICS_FILE in names


def read_model(workdir: str) -> dict:
  """The run's model.json ({} if it has none yet)."""
  path = epath.Path(workdir) / MODEL_FILE
  return json.loads(path.read_text()) if path.exists() else {}


class Lock:
  """`with Lock(workdir):` holds `<workdir>/.lock` exclusively, or raises WorkdirInUseError."""

  def __init__(self, workdir: str, what: str = "run", name: str = LOCK_FILE):
    self.workdir, self.what, self.name, self._file = str(workdir), what, name, None

  def __enter__(self):
    if storage.is_remote(self.workdir):
      warnings.warn(f"{self.workdir} is a bucket: it cannot be locked, so make sure no other job "
                    "writes into it.", stacklevel=2)
      return self
    import fcntl  # pylint: disable=g-import-not-at-top  # POSIX only, like the rest of the trainer

    path = os.path.join(self.workdir, self.name)
    self._file = open(path, "a+")  # pylint: disable=consider-using-with  # held until __exit__
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      self._file.seek(0)
      holder = self._file.read().strip() or "another process"
      self._file.close()
      self._file = None
      raise WorkdirInUseError(
          f"{self.workdir} is in use by {holder}. Two {self.what}s in one workdir would overwrite "
          "each other's checkpoints: wait for it to finish (or stop it), or use another --workdir."
      ) from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{datetime.datetime.now().isoformat(timespec='seconds')} "
                     f"({' '.join(sys.argv[:3])} ...)\n")
    self._file.flush()
    return self

  def __exit__(self, *exc):
    if self._file is not None:
      self._file.close()  # closing releases the flock
      self._file = None


def check_writable(workdir: str) -> None:
  """Creates `workdir` and writes a probe file there, or raises a WorkdirError saying why not."""
  path = epath.Path(workdir)
  probe = path / f".write_test.{os.getpid()}"

  def write_probe():
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    # A DELETE whose answer was lost, retried by gcsfs, finds the probe gone (404): that is success.
    probe.unlink(missing_ok=True)

  try:  # a timeout or a 503 is retried, not reported as an unwritable workdir
    storage.retrying(f"writing a probe file in {workdir}", write_probe)
  except OSError as e:
    raise WorkdirError(f"cannot write to the workdir {workdir}: {_why_not(workdir, e)}. Choose a "
                       "--workdir you can write to (nothing was changed).") from None


def _why_not(workdir: str, error: OSError) -> str:
  """The reason a folder cannot be made or written, in words, from the error and the path."""
  if storage.is_remote(workdir):
    return error.strerror or str(error)
  path = os.path.abspath(workdir)
  if os.path.isfile(path):
    return "it is a file, not a folder"
  ancestor = path
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if ancestor != path and not os.path.isdir(ancestor):
    return f"{ancestor} is a file, not a folder"
  if error.errno == errno.ENOSPC:
    return f"no space left on the disk holding {ancestor}"
  if error.errno == errno.EROFS:
    return f"{ancestor} is on a read-only file system"
  if error.errno in (errno.EACCES, errno.EPERM):
    return f"{ancestor} is read-only for this user (no permission to write there)"
  if ancestor != path:  # e.g. /proc or /sys, where ordinary folders cannot be made
    return f"{path} does not exist, and {ancestor} does not accept new folders"
  return error.strerror or str(error)


def read_config(workdir: str) -> dict | None:
  """The config a run wrote to `<workdir>/config.json`, as a dict; None when there is none."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not storage.exists(path):
    return None
  try:
    return json.loads(storage.read_text(path))
  except json.JSONDecodeError:
    raise WorkdirError(f"{path} is not valid JSON (damaged?); the config that wrote this workdir's "
                       f"checkpoints is also in {HISTORY_FILE} there. Restore config.json from it, or "
                       "use a new --workdir.") from None


def record_config(workdir: str, config, start_step: int) -> None:
  """Writes config.json (this segment) and appends it, with its first step, to the history."""
  root = epath.Path(workdir)
  text = config.to_json_best_effort(sort_keys=True)
  entry = json.dumps({"start_step": start_step,
                      "time": datetime.datetime.now().isoformat(timespec="seconds"),
                      "config": json.loads(text)}) + "\n"
  history = root / HISTORY_FILE
  if storage.is_remote(workdir):  # objects cannot be appended to: rewrite the whole (small) file
    storage.write_atomic(history, (storage.read_text(history) if storage.exists(history) else "")
                         + entry)
  else:
    with open(history, "a") as f:
      f.write(entry)
  storage.write_atomic(root / CONFIG_FILE, config.to_json_best_effort(indent=2, sort_keys=True))
