"""Config files and command-line overrides, ml_collections style.

`--config configs/cifar10.py:resnet56` loads that file's `get_config("resnet56")`; each
`--config.key=value` then overrides one key. Configs are locked and type-safe: an unknown key or a value
of the wrong type is an error that names the key.

Config files are loaded by path. A path under `configs/` that does not exist where the command runs
is looked up among the presets that ship with the package, so `--config configs/quickstart.py` works
from a checkout and from an installed wheel alike. Files in a `configs` folder may import their
siblings as `from configs import cifar10`: while a file loads, `configs` names its own folder tree.
"""

import ast
import difflib
import importlib.util
import inspect
import json
import os
import sys
import traceback
import types

import ml_collections

from resnet_jax.config.defaults import default_config
from resnet_jax.run import storage
from resnet_jax.run.errors import ConfigError, UserError

PRESETS = "configs"  # the checkout's folder of presets, shipped in the wheel as resnet_jax/presets
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this package's code


def presets_dir() -> str | None:
  """Where this installation's presets are: the checkout's configs/, or the wheel's copy."""
  package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for candidate in (os.path.join(os.path.dirname(package), PRESETS),  # a checkout (editable install)
                    os.path.join(package, "presets")):  # a wheel
    if os.path.isfile(os.path.join(candidate, "cifar10.py")):
      return candidate
  return None


def resolve_path(path: str) -> str:
  """`path` if it exists; else, for `configs/...`, the shipped preset of that name."""
  if os.path.isfile(path):
    return path
  parts = os.path.normpath(path).split(os.sep)
  shipped = presets_dir()
  if parts[0] == PRESETS and shipped is not None:
    candidate = os.path.join(shipped, *parts[1:])
    if os.path.isfile(candidate):
      return candidate
  hint = f" Shipped presets are in {shipped}." if shipped else ""
  raise ConfigError(f"config file {path!r} does not exist (expected e.g. configs/quickstart.py).{hint}")


def _configs_root(path: str) -> str | None:
  """The folder that `from configs import ...` means for the file at `path`."""
  shipped = presets_dir()
  folder = os.path.dirname(os.path.abspath(path))
  while True:
    if os.path.basename(folder) == PRESETS or (shipped and os.path.samefile(folder, shipped)):
      return folder
    parent = os.path.dirname(folder)
    if parent == folder:
      return None
    folder = parent


def load_module(path: str):
  """Imports a config (or sweep) file by path (see `resolve_path`)."""
  path = resolve_path(path)
  root = _configs_root(path)
  # `configs` is a package only while the file loads (and imports its siblings), so no top-level
  # `configs` outlives the call to clash with a user's own.
  saved = {k: v for k, v in sys.modules.items() if k == PRESETS or k.startswith(PRESETS + ".")}
  if root is not None:
    package = types.ModuleType(PRESETS)
    package.__path__ = [root]
    sys.modules[PRESETS] = package
  try:
    module_spec = importlib.util.spec_from_file_location(f"_resnet_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
      module_spec.loader.exec_module(module)
    except SyntaxError as e:
      raise ConfigError(f"config file {e.filename}, line {e.lineno}: {e.msg}: "
                       f"{(e.text or '').strip()!r}. Fix the file and re-run.") from None
    except Exception as e:  # pylint: disable=broad-except
      if not _users_mistake(e, root or path):
        raise  # a bug in the project code the file called: keep its traceback
      raise ConfigError(f"config file {_where(e, root or path)}: {type(e).__name__}: {e}. Fix the "
                       "file and re-run.") from None
  finally:
    if root is not None:
      for name in [k for k in sys.modules if k == PRESETS or k.startswith(PRESETS + ".")]:
        del sys.modules[name]
      sys.modules.update(saved)
  return module


def _within(path: str, folder: str) -> bool:
  path, folder = os.path.abspath(path), os.path.abspath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _is_project_code(path: str) -> bool:
  """A file of this package's own code; the presets a wheel ships inside it are config files."""
  return _within(path, _PACKAGE) and not _within(path, os.path.join(_PACKAGE, "presets"))


def _in_config_file(frame, inside: str) -> bool:
  return _within(frame.filename, inside) and not _is_project_code(frame.filename)


def _users_mistake(error: BaseException, inside: str) -> bool:
  """Whether `error`, raised while a config file under `inside` ran, is the file's own: raised by
  the file itself (a preset refusing its ARG) or by a library call it made, or a `UserError`. An
  error raised in this package's code below the file's last frame is a bug there, which keeps its
  traceback however the file called it; so is one raised outside any config file."""
  if isinstance(error, UserError):
    return True
  frames = traceback.extract_tb(error.__traceback__)  # outermost first
  mine = [i for i, f in enumerate(frames) if _in_config_file(f, inside)]
  return bool(mine) and not any(_is_project_code(f.filename) for f in frames[mine[-1] + 1:])


def _where(error: BaseException, inside: str, fallback: str | None = None) -> str:
  """'file, line N' of the innermost traceback frame in a config file under `inside`, else
  `fallback` (the file itself) or `inside`."""
  frames = [f for f in traceback.extract_tb(error.__traceback__) if _in_config_file(f, inside)]
  return f"{frames[-1].filename}, line {frames[-1].lineno}" if frames else (fallback or inside)


def _check_arity(function, fn: str, path: str, args: list) -> None:
  """A file's function called with more arguments than it takes: say so, naming what it takes."""
  try:
    params = inspect.signature(function).parameters.values()
  except (TypeError, ValueError):
    return
  if any(p.kind == p.VAR_POSITIONAL for p in params):
    return
  takes = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  if len(args) <= len(takes):
    return
  if fn == "get_config" and not takes:
    raise ConfigError(f"config file {path} takes no argument, but {path}:{args[-1]} gives one; use "
                      f"--config {path}.")
  raise ConfigError(f"config file {path}: {fn}() takes {len(takes)} argument(s) "
                    f"({', '.join(takes) or 'none'}), given {len(args)}: {args}.")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path.py` or `path.py:arg` by calling the file's `get_config([arg])`."""
  path, _, arg = spec.partition(":")
  return call(load_module(path), "get_config", path, arg)


def call(module, fn: str, path: str, *args):
  """`module.fn(*args)` of a loaded config or sweep file; empty-string arguments are left out.

  An error inside it names the file and line. A returned ConfigDict must hold known keys only: a
  file works on an unlocked ConfigDict, where a misspelt key would be a new key.
  """
  if not hasattr(module, fn):
    raise ConfigError(f"config file {path!r} has no {fn}() function.")
  args = [a for a in args if a != ""]
  _check_arity(getattr(module, fn), fn, path, args)
  try:
    result = getattr(module, fn)(*args)
  except Exception as e:  # pylint: disable=broad-except
    inside = os.path.dirname(resolve_path(path))
    if not _users_mistake(e, inside):
      raise  # a bug in the project code the file called: keep its traceback
    where = _where(e, inside, resolve_path(path))
    # A preset's own ValueError (e.g. an unknown model name) or a UserError says enough.
    what = (str(e) if isinstance(e, (ValueError, UserError))
            else f"{fn}({', '.join(map(repr, args))}) raised {type(e).__name__}: {e}.")
    raise ConfigError(f"config file {where}: {what}") from None
  if fn not in ("get_config", "member_config"):
    return result
  if not isinstance(result, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: {fn}() must return an ml_collections.ConfigDict.")
  unknown = sorted(set(result.keys()) - set(default_config().keys()))
  if unknown:
    raise ConfigError(f"config file {path} sets {unknown_key_error(unknown[0], default_config().keys())}")
  return result


def _parse_value(key: str, raw: str, current):
  if isinstance(current, str):
    return raw
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    raise ConfigError(f"--config.{key}={raw!r}: not a valid {type(current).__name__} literal.") from None
  if isinstance(current, bool) != isinstance(value, bool):
    raise ConfigError(f"--config.{key}: expected {type(current).__name__}, got {raw!r}.")
  if isinstance(current, float) and isinstance(value, int):
    value = float(value)
  if isinstance(current, tuple) and isinstance(value, (list, int)):
    value = tuple(value) if isinstance(value, list) else (value,)
  return value


def unknown_key_error(key: str, known) -> ConfigError:
  """The error for a key that does not exist, suggesting the closest valid ones."""
  close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
  hint = f"did you mean {' or '.join(repr(k) for k in close)}? " if close else ""
  return ConfigError(f"unknown config key {key!r}; {hint}every key is listed in "
                    "resnet_jax/config/defaults.py.")


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
  """Sets each dotted `key` to its parsed `value` string; the config must already have the key."""
  for key, raw in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part] if part in node else None
      if not isinstance(node, ml_collections.ConfigDict):
        raise unknown_key_error(key, config.keys())
    if leaf not in node:
      raise unknown_key_error(key, [".".join(parents + [k]) for k in node.keys()])
    value = _parse_value(key, raw, node[leaf])
    try:
      node[leaf] = value
    except TypeError as e:
      raise ConfigError(f"--config.{key}={raw!r}: {e}") from None


def load(spec: str, overrides: dict[str, str] | None = None) -> ml_collections.ConfigDict:
  """The resolved config: file, then overrides; locked so typos fail loudly later too."""
  config = load_config_file(spec)
  config.lock()
  apply_overrides(config, overrides or {})
  return config


def from_dict(data: dict) -> ml_collections.ConfigDict:
  """A locked config from a run's saved values; keys added since it was written take their defaults."""
  data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
  config = ml_collections.ConfigDict({**default_config().to_dict(), **data})
  config.lock()
  return config


def from_json(path: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to `<workdir>/config.json` (a local path or gs://).

  Keys added to the defaults after the run was written take their defaults, so a run from an older
  version still evaluates and reports.
  """
  return from_dict(json.loads(storage.read_text(path)))
