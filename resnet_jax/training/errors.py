"""How a run can end other than by finishing, and the exit code of each (imports nothing heavy, so
the command line can map them without loading JAX)."""

EXIT_NON_FINITE = 1        # a NaN or infinite loss or gradient norm; earlier checkpoints are kept
EXIT_BAD_INPUT = 2         # config, workdir or data that cannot work; nothing was changed
EXIT_IO_ERROR = 74         # sysexits.h EX_IOERR: e.g. the disk filled up; re-run once fixed
EXIT_STOPPED_EARLY = 75    # sysexits.h EX_TEMPFAIL: SIGTERM or Ctrl-C, checkpoint saved; re-run resumes
EXIT_ABORTED = 130         # a second Ctrl-C: stopped at once (128 + SIGINT), no new checkpoint


class StoppedEarly(Exception):
  """SIGTERM or Ctrl-C arrived; a checkpoint was saved and the run can resume."""


class NonFiniteError(RuntimeError):
  """A loss or gradient norm was NaN or infinite; checkpoints from before it are kept."""


class DiskFullError(OSError):
  """The disk filled up while writing a checkpoint or metrics; earlier checkpoints are kept."""


class WorkdirInUseError(RuntimeError):
  """Another process holds the workdir's lock."""


def exit_code(error: BaseException) -> int | None:
  """The exit code for an error a run can end with; None for an unexpected one (a bug: traceback)."""
  if isinstance(error, KeyboardInterrupt):
    return EXIT_ABORTED
  if isinstance(error, StoppedEarly):
    return EXIT_STOPPED_EARLY
  if isinstance(error, NonFiniteError):
    return EXIT_NON_FINITE
  if isinstance(error, DiskFullError):
    return EXIT_IO_ERROR
  if isinstance(error, (ValueError, WorkdirInUseError)):
    return EXIT_BAD_INPUT
  return None
