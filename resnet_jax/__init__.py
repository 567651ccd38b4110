"""resnet-jax: paper-exact residual and plain networks (He et al. 2015) in JAX/Flax.

The package is laid out in the order data flows, each subpackage one room that only uses rooms below
it (each `__init__` says what it holds and may import):

  config/       every key with its default; config files and --config.key=value overrides
  data/         the sampling plan, datasets (digits, synthetic, TFDS), augmentation, preparation
  models/       layers, blocks, ResNet, pre-activation, VGG, scanned stages, FLOPs, the registry
  training/     the pure step, optimizer, jit/pmap strategies, trainer, loop, checkpoints, metrics log
  pretrained/   torchvision's ResNet weights to our variables and back, downloads, converted workdirs
  experiments/  sweeps, reports, plots, analyses of trained checkpoints
  bench/        `resnet-jax bench` and `data-bench`
  cli.py        the `resnet-jax` command: parses arguments, calls the rooms above
  checks.py, storage.py, runtime.py: small floors every room may stand on (option checks, local or
                bucket paths, the command's process set-up)

Importing the package is light: it pulls in neither TensorFlow nor TFDS, and not even JAX until a
submodule is used. `from resnet_jax import models` is the entry point for embedding our networks,
`from resnet_jax import pretrained` for torchvision's weights; both need only jax, flax and numpy.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.2.0"

_LAZY = ("models", "pretrained")

# Version 0.1 kept every module side by side in resnet_jax/. Their old names still import (with a
# DeprecationWarning) as the modules that now hold their code, until 0.3.
MOVED = {
    "layers": "models.layers", "stages": "models.stages", "preact": "models.preact",
    "vgg": "models.vgg", "flops": "models.flops",
    "configuration": "config",
    "augment": "data.augment", "input_pipeline": "data", "tfds_data": "data.tfds_source",
    "device_data": "data.on_device", "prepare": "data.prepare",
    "train_step": "training.step", "optim": "training.optim", "parallel": "training.parallel",
    "checkpointing": "training.checkpoints", "distributed": "training.distributed",
    "reporting": "training.metrics_log", "train": "training.loop",
    "sweep": "experiments.sweep", "report": "experiments.report", "plots": "experiments.plots",
    "analysis": "experiments.responses",
    "data_bench": "bench.data",
}


def _moved(name: str):
  new = f"{__name__}.{MOVED[name]}"
  warnings.warn(f"{__name__}.{name} moved to {new} in resnet-jax 0.2; import it from there (the old "
                "name goes in 0.3).", DeprecationWarning, stacklevel=3)
  return importlib.import_module(new)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """`import resnet_jax.train` (an old path) gives the module that now holds that code."""

  def find_spec(self, fullname, path=None, target=None):
    del path, target
    package, _, name = fullname.rpartition(".")
    if package == __name__ and name in MOVED:
      return importlib.util.spec_from_loader(fullname, self)
    return None

  def create_module(self, spec):
    return _moved(spec.name.rpartition(".")[2])  # the new module itself, registered under both names

  def exec_module(self, module):
    del module  # already executed under its new name


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
  sys.meta_path.append(_MovedFinder())


def __getattr__(name):
  # Lazy submodules keep `import resnet_jax` free of heavy imports (embedding users).
  if name in _LAZY:
    return importlib.import_module(f"{__name__}.{name}")
  if name in MOVED:
    return _moved(name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
