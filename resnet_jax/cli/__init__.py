"""The `resnet-jax` command: parses arguments (`parser`), calls the library (`commands`; `compile_report`:
the compile report in words), and maps how a
command ends to its exit code: a user's mistake is one sentence and exit 2, a stop or a full disk its
own code, anything else a bug with its traceback (`resnet_jax.run.errors`).
"""

import os
import sys

from resnet_jax.cli.commands import COMMANDS, needs
from resnet_jax.cli.parser import build_parser
from resnet_jax.run import console, errors, extras, process


def _storage():
  """`resnet_jax.run.storage`, or None in the light install (jax, flax, numpy: no etils), where
  only `models` runs and no path is read."""
  try:
    from resnet_jax.run import storage  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError:
    return None
  return storage


def main(argv=None) -> int:
  parser = build_parser(COMMANDS)
  args, extra = parser.parse_known_args(argv)
  if extra and args.command not in ("train", "sweep", "convert", "compile"):
    parser.error(f"unrecognised arguments: {' '.join(extra)}")
  args.overrides = extra
  quiet = process.platforms_without_tpu_probe(os.environ)
  if quiet is not None:
    os.environ["JAX_PLATFORMS"] = quiet
  try:
    extras.require(args.command, needs(args))
    storage = _storage()
    if storage is not None:
      storage.use_gcsfs()  # before any gs:// path is touched: epath keeps its first choice
    workdir = getattr(args, "workdir", None)
    if workdir and storage is not None and storage.is_remote(workdir):
      print(f"resnet-jax {args.command}: {workdir} is read and written through "
            f"{storage.backend(workdir)}", file=sys.stderr)
    with console.routed_warnings():  # `resnet-jax: warning: ...`, each once, libraries' too
      return args.func(args)
  except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except
    code = errors.exit_code(e)
    extra = extras.missing_extra(e.name or "") if isinstance(e, ModuleNotFoundError) else None
    if code is None and extra:  # a package `needs` did not foresee, really not installed: name its extra
      e, code = errors.MissingExtraError(
          f"this command needs the {e.name!r} package, which this install leaves out: pip install "
          f"'resnet-jax[{extra}]'"), errors.EXIT_BAD_INPUT
    if code is None:
      raise  # not a mistake a user can fix or a stop we expect: a bug, with its traceback
    if isinstance(e, KeyboardInterrupt):
      message = ("stopped at once by a second Ctrl-C; nothing was saved after the last checkpoint, "
                 "from which the same command resumes.")
    elif isinstance(e, errors.StoppedEarly):
      message = str(e)
    else:
      message = f"error: {e}"
    print(f"resnet-jax {args.command}: {message}", file=sys.stderr)
    return code


def entry_point() -> int:
  """The installed `resnet-jax` command: `main`, re-executed once with glibc huge pages where they
  apply (resnet_jax.run.process)."""
  env = process.hugepage_environment(os.environ)
  if env is not None and sys.executable:
    os.execve(sys.executable, [sys.executable, "-m", "resnet_jax.cli", *sys.argv[1:]], env)
  return main()
