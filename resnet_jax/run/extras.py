"""The packages each command needs, and which extra (pyproject.toml) installs each, checked before a
command starts: a sweep that would train for an hour and then fail for want of matplotlib is told so
in its first second, with every missing extra named in one line.

`pip install resnet-jax` alone has jax, flax and numpy: enough for the models, `resnet-jax models`
and torchvision state dicts held as NumPy arrays.
"""

import importlib.util

from resnet_jax.run.errors import MissingExtraError

# Module -> the extra that installs it.
PACKAGES = {
    "optax": "train", "orbax.checkpoint": "train", "ml_collections": "train", "etils": "train",
    "chex": "train", "sklearn": "train", "grain": "train", "array_record": "train",
    "tensorflow_datasets": "train", "PIL": "train", "importlib_resources": "train",
    "matplotlib": "report", "tensorflow": "data", "torch": "torch", "safetensors": "torch",
    "libtpu": "tpu", "jax_cuda12_plugin": "gpu", "gcsfs": "gcs",
}
TRAIN = tuple(m for m, extra in PACKAGES.items() if extra == "train")
# What each extra adds on top of the ones it includes (pyproject.toml): the smallest install line
# names the extra that covers the most.
INCLUDES = {"report": {"train"}, "data": {"train"}, "torch": {"train"}, "tpu": {"train"},
            "gpu": {"train"}, "gcs": {"train"},
            "bench": {"torch", "train"}}


def missing(modules) -> list[str]:
  """The modules of `modules` that cannot be imported here (found without importing them)."""
  out = []
  for name in modules:
    try:
      found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken install
      found = False
    if not found:
      out.append(name)
  return out


def require(command: str, modules) -> None:
  """Raises MissingExtraError naming every missing module of `modules`, its extra, and one install
  line that covers them all; returns quietly when everything is there."""
  absent = missing(modules)
  if not absent:
    return
  extras = sorted({PACKAGES.get(m, "train") for m in absent})
  covered = [e for e in extras if not any(e in INCLUDES.get(other, ()) for other in extras)]
  names = ", ".join(f"{m} ({PACKAGES.get(m, 'train')})" for m in absent)
  raise MissingExtraError(
      f"`resnet-jax {command}` needs packages that this install leaves out: {names}. Install them "
      f"with: pip install 'resnet-jax[{','.join(covered)}]'")


def missing_extra(module: str) -> str | None:
  """The extra to install after `import` failed to find `module` (`ModuleNotFoundError.name`): only
  when `module` is, or lies in, or holds one of our extras' packages and that package is really not
  installed here. A module missing from a package that is installed (an incompatible version, a
  broken install, a bug) is no missing extra: None."""
  for name, extra in PACKAGES.items():
    related = module == name or module.startswith(name + ".") or name.startswith(module + ".")
    if related and missing([name]):
      return extra
  return None
