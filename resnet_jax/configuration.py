"""Config files and command-line overrides, ml_collections style.

`--config configs/cifar10.py:resnet56` loads that file's `get_config("resnet56")`; each
`--config.key=value` then overrides one key. Configs are locked and type-safe: an unknown key or a value
of the wrong type is an error that names the key.
"""

import ast
import importlib.util
import json
import os
import sys

from etils import epath
import ml_collections


def load_module(path: str):
  """Imports a config (or sweep) file by path."""
  if not os.path.isfile(path):
    raise ValueError(f"config file {path!r} does not exist (expected e.g. configs/quickstart.py).")
  # Experiment files import their base as `from configs import default`: make the folder that holds
  # `configs/` importable while the file loads, wherever the command runs from.
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  added = root not in sys.path
  if added:
    sys.path.insert(0, root)
  try:
    module_spec = importlib.util.spec_from_file_location(f"_resnet_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  finally:
    if added:
      sys.path.remove(root)
  return module


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path.py` or `path.py:arg` by calling the file's `get_config([arg])`."""
  path, _, arg = spec.partition(":")
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path!r} has no get_config() function.")
  config = module.get_config(arg) if arg else module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f"{path}: get_config() must return an ml_collections.ConfigDict.")
  return config


def _parse_value(key: str, raw: str, current):
  if isinstance(current, str):
    return raw
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    raise ValueError(f"--config.{key}={raw!r}: not a valid {type(current).__name__} literal.") from None
  if isinstance(current, bool) != isinstance(value, bool):
    raise ValueError(f"--config.{key}: expected {type(current).__name__}, got {raw!r}.")
  if isinstance(current, float) and isinstance(value, int):
    value = float(value)
  if isinstance(current, tuple) and isinstance(value, (list, int)):
    value = tuple(value) if isinstance(value, list) else (value,)
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
  """Sets each dotted `key` to its parsed `value` string; the config must already have the key."""
  for key, raw in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part] if part in node else None
      if not isinstance(node, ml_collections.ConfigDict):
        raise ValueError(f"unknown config key {key!r}; see configs/default.py for every key.")
    if leaf not in node:
      raise ValueError(f"unknown config key {key!r}; see configs/default.py for every key.")
    value = _parse_value(key, raw, node[leaf])
    try:
      node[leaf] = value
    except TypeError as e:
      raise ValueError(f"--config.{key}={raw!r}: {e}") from None


def load(spec: str, overrides: dict[str, str] | None = None) -> ml_collections.ConfigDict:
  """The resolved config: file, then overrides; locked so typos fail loudly later too."""
  config = load_config_file(spec)
  config.lock()
  apply_overrides(config, overrides or {})
  return config


def from_json(path: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to `<workdir>/config.json` (a local path or gs://).

  Keys added to configs/default.py after the run was written take their defaults, so a run from an
  older version still evaluates and reports.
  """
  from configs import default  # pylint: disable=g-import-not-at-top  # configs imports nothing of ours
  data = json.loads(epath.Path(path).read_text())
  data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
  config = ml_collections.ConfigDict({**default.get_config().to_dict(), **data})
  config.lock()
  return config


_CHOICES = {"dtype": ("float32", "bfloat16", "float16")}
_POSITIVE = ("batch_size", "eval_batch_size", "total_steps", "log_every_steps")
_NON_NEGATIVE = ("eval_every_steps", "checkpoint_every_steps", "bn_group_size", "num_devices",
                 "num_classes", "image_size", "label_smoothing")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the keys the loop itself reads; modules check their own (optim, models, parallel)."""
  for key, choices in _CHOICES.items():
    if config[key] not in choices:
      raise ValueError(f"{key}={config[key]!r} is not one of {list(choices)}.")
  for key in _POSITIVE:
    if config[key] <= 0:
      raise ValueError(f"{key}={config[key]} must be > 0.")
  for key in _NON_NEGATIVE:
    if config[key] < 0:
      raise ValueError(f"{key}={config[key]} must be >= 0.")
  if config.keep_checkpoints < 1:
    raise ValueError(f"keep_checkpoints={config.keep_checkpoints} must be >= 1.")
