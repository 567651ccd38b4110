"""Reading and writing state dicts (flat name -> array mappings) as .pth, .safetensors or .npz files.

`.npz` needs only NumPy; `.safetensors` the `safetensors` package; `.pth` torch. The last two are
imported only when such a file is read or written, and their absence is an error that names the
package to install.
"""

import collections
import os
from typing import Any, Mapping

import numpy as np

from resnet_jax.run.errors import MissingExtraError, WeightsError

SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".npz")
_ORDER = "resnet_jax.key_order"  # .safetensors metadata: the state dict's key order, restored on load


def _suffix(path: str) -> str:
  suffix = os.path.splitext(str(path))[1].lower()
  if suffix not in SUFFIXES:
    raise WeightsError(f"{path}: unknown state-dict format {suffix!r}; expected one of "
                     f"{', '.join(SUFFIXES)}.")
  return suffix


def _need(module: str, extra: str, what: str):
  import importlib  # pylint: disable=g-import-not-at-top

  try:
    return importlib.import_module(module)
  except ModuleNotFoundError:
    raise MissingExtraError(f"{what} needs the {module.split('.')[0]} package: pip install "
                            f"'resnet-jax[{extra}]' (or pip install {module.split('.')[0]}).") from None


def load_state_dict(path: str) -> "collections.OrderedDict[str, np.ndarray]":
  """The state dict in `path` as NumPy arrays, in the file's order.

  `.pth` files are read with `torch.load(weights_only=True)` (tensors only, no pickled code), onto
  the CPU; a checkpoint that wraps its weights as {"state_dict": ...} or {"model": ...} is unwrapped.
  """
  suffix = _suffix(path)
  if not os.path.isfile(path):
    raise WeightsError(f"{path}: no such file.")
  if suffix == ".npz":
    with np.load(path, allow_pickle=False) as f:
      return collections.OrderedDict((k, f[k]) for k in f.files)
  if suffix == ".safetensors":
    safetensors = _need("safetensors", "torch", f"reading {path}")
    with safetensors.safe_open(path, framework="np") as f:
      keys = list(f.keys())  # the format stores tensors sorted, not in the state dict's order
      order = (f.metadata() or {}).get(_ORDER, "").split(",")
      if sorted(order) == sorted(keys):
        keys = order
      return collections.OrderedDict((k, f.get_tensor(k)) for k in keys)
  torch = _need("torch", "torch", f"reading {path}")
  obj = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("state_dict", "model"):
    if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
      obj = obj[key]
  if not isinstance(obj, Mapping):
    raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict.")
  out = collections.OrderedDict()
  for key, value in obj.items():
    if hasattr(value, "detach"):
      value = value.detach().cpu()
      value = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    out[key] = np.asarray(value)
  return out


def save_state_dict(state_dict: Mapping[str, Any], path: str) -> str:
  """Writes `state_dict` (name -> array) to `path` in the format its suffix names; returns `path`.

  A `.pth` file holds torch tensors, loadable with `torch.load` and `model.load_state_dict`.
  """
  suffix = _suffix(path)
  arrays = collections.OrderedDict((k, np.asarray(v, order="C")) for k, v in state_dict.items())
  if suffix == ".npz":
    np.savez(path, **arrays)
  elif suffix == ".safetensors":
    _need("safetensors.numpy", "torch", f"writing {path}").save_file(
        dict(arrays), path, metadata={_ORDER: ",".join(arrays)})
  else:
    torch = _need("torch", "torch", f"writing {path}")
    torch.save(collections.OrderedDict((k, torch.from_numpy(v)) for k, v in arrays.items()), path)
  return path
