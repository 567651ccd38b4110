"""resnet-jax: paper-exact residual and plain networks (He et al. 2015) in JAX/Flax.

Importing the package is light: it pulls in neither TensorFlow nor TFDS, and not even JAX until a
submodule is used. `from resnet_jax import models` is the entry point for embedding our networks.
"""

import importlib

__version__ = "0.1.0"

_LAZY = ("models",)


def __getattr__(name):
  # Lazy submodules keep `import resnet_jax` free of heavy imports (issue: embedding users).
  if name in _LAZY:
    return importlib.import_module(f"resnet_jax.{name}")
  raise AttributeError(f"module 'resnet_jax' has no attribute {name!r}")
