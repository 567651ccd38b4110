"""Configuration: every key with its default (`defaults`), and loading config files with overrides
(`files`).

What lives here: `default_config()`, the one place every key is listed with a comment; `load(spec,
overrides)` for `--config FILE[:ARG]` and `--config.key=value`; `from_json` for a run's saved
config.json; `resume.changed_keys`, the keys a resume may not change. Experiment presets are files
under the repository's `configs/` (shipped in the wheel too), loaded by path. Whether the values
work together is checked once, before any I/O, by `resnet_jax.training.validation`, which knows the
models and datasets.

What it may import: ml_collections, etils and `resnet_jax.run` (its errors; storage, to read a
run's config.json from a bucket); no other subpackage. Every layer above reads a config, none writes
one.
"""

from resnet_jax.config.defaults import CHANGEABLE_ON_RESUME, default_config
from resnet_jax.config.files import (apply_overrides, call, from_dict, from_json, load, load_config_file,
                                     load_module, presets_dir, resolve_path, unknown_key_error)

__all__ = ["CHANGEABLE_ON_RESUME", "default_config", "apply_overrides", "call", "from_dict", "from_json",
           "load", "load_config_file", "load_module", "presets_dir", "resolve_path",
           "unknown_key_error"]
