"""How a command can end other than by finishing, and the exit code of each.

Errors are sorted by kind, not by the class of exception Python or JAX happens to raise: a
`UserError` is a mistake the user can fix (a bad config, workdir, data source or install) and is
reported as one sentence with exit 2; a run that stopped on purpose or hit a wall it can resume
from has its own code; everything else is a bug and keeps its traceback (exit 1). JAX raises
`ValueError` for its own shape and sharding failures, so a `ValueError` alone never means "user".

The user errors derive from `UserError` alone, not from `ValueError` or `RuntimeError` as well: a
caller that handles a user's mistake catches `UserError` (or one kind of it), and an `except
ValueError` can never take a bug for one. Imports nothing, so every layer may raise these.
"""

EXIT_NON_FINITE = 1        # a NaN or infinite loss or gradient norm; earlier checkpoints are kept
EXIT_BUG = 1               # an unexpected error: Python's own exit status, with the traceback
EXIT_BAD_INPUT = 2         # config, workdir, data or install that cannot work; nothing was changed
EXIT_IO_ERROR = 74         # sysexits.h EX_IOERR: e.g. the disk filled up; re-run once fixed
EXIT_STOPPED_EARLY = 75    # sysexits.h EX_TEMPFAIL: SIGTERM or Ctrl-C, checkpoint saved; re-run resumes
EXIT_STORAGE_UNAVAILABLE = 75  # EX_TEMPFAIL too: the bucket kept failing; nothing moved; re-run
EXIT_ABORTED = 130         # a second Ctrl-C: stopped at once (128 + SIGINT), no new checkpoint


class UserError(Exception):
  """A mistake the user can fix: its message names the problem and the fix; exit 2."""


class ConfigError(UserError):
  """A config key (or a config or sweep file) that cannot work."""


class WorkdirError(UserError):
  """A workdir that cannot be used: not writable, not a run's, or another run's config."""


class WorkdirInUseError(UserError):
  """Another process holds the workdir's lock."""


class IncompatibleCheckpointError(UserError):
  """A checkpoint that holds another state tree (another model, dataset or optimizer)."""


class DataError(UserError):
  """A dataset or source file that cannot be read as asked (missing, corrupt, not prepared)."""


class WeightsError(UserError):
  """A weights file, URL or name that cannot be converted as asked (format, architecture, checksum)."""


class LaunchError(UserError):
  """The environment of a multi-process launch is incomplete or inconsistent."""


class MissingExtraError(UserError):
  """The command needs packages that the installed extras leave out."""


class StoppedEarly(Exception):
  """SIGTERM or Ctrl-C arrived; a checkpoint was saved and the run can resume."""


class NonFiniteError(Exception):
  """A loss or gradient norm was NaN or infinite; checkpoints from before it are kept."""


class DiskFullError(Exception):
  """The disk filled up while writing a checkpoint or metrics; earlier checkpoints are kept."""


class StorageUnavailableError(Exception):
  """Storage kept failing with transient errors (timeouts, resets, 429/5xx) past the retry budget.

  Not an OSError, so that no handler of local file errors mistakes it for a full or read-only disk.
  """


# The exit code of each ending we expect, the first matching kind winning (the more specific first).
_EXIT_CODES = ((KeyboardInterrupt, EXIT_ABORTED), (StoppedEarly, EXIT_STOPPED_EARLY),
               (NonFiniteError, EXIT_NON_FINITE), (StorageUnavailableError, EXIT_STORAGE_UNAVAILABLE),
               (DiskFullError, EXIT_IO_ERROR), (UserError, EXIT_BAD_INPUT))


def exit_code(error: BaseException) -> int | None:
  """The exit code of an ending we expect; None for anything else (a bug: keep its traceback)."""
  return next((code for kind, code in _EXIT_CODES if isinstance(error, kind)), None)
