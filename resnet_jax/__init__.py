"""resnet-jax: paper-exact residual and plain networks (He et al. 2015) in JAX/Flax.

The package is laid out in the order data flows: each subpackage is one layer, which imports only the
layers below it (each `__init__` says what it holds and may import):

  run/          run infrastructure: errors and exit codes, console, workdir lock and files, metrics
                log, storage, multi-host start-up, extras, process set-up (every layer may import it)
  config/       every key with its default; config files and --config.key=value overrides
  data/         the sampling plan, datasets (digits, synthetic, TFDS), augmentation, preparation
  models/       layers, blocks, ResNet, pre-activation, VGG, scanned stages, FLOPs, the registry
  training/     validation, the pure step, optimizer, jit/pmap/group strategies, trainer, the one
                loop, its lifecycle and cadence, checkpoints
  pretrained/   torchvision's ResNet weights to our variables and back, downloads, converted workdirs
  experiments/  sweeps, reports, plots, analyses of trained checkpoints
  bench/        `resnet-jax bench` and `data-bench`
  targets/      `resnet-jax compile`: the step compiled for accelerators we do not have
  cli/          the `resnet-jax` command: parses arguments, calls the layers above
  checks.py     the one check of a string option; no dependencies, so every layer may import it

Importing the package is light: it pulls in neither TensorFlow nor TFDS, and not even JAX until a
submodule is used. `from resnet_jax import models` is the entry point for embedding our networks,
`from resnet_jax import pretrained` for torchvision's weights; both need only jax, flax and numpy.
"""

import importlib

__version__ = "0.2.0"

_LAZY = ("models", "pretrained")


def __getattr__(name):
  # Lazy submodules keep `import resnet_jax` free of heavy imports (embedding users).
  if name in _LAZY:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
