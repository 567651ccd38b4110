"""Pretrained weights: torchvision's ResNets converted to our variables and back, from files or URLs.

What lives here: `torchvision` (state dict <-> {"params", "batch_stats"}, NumPy only), `files`
(reading and writing `.pth`, `.safetensors` and `.npz` state dicts), `hub` (torchvision's
published weights: URLs, checksum, local cache) and `convert` (a converted net as a run's Orbax
checkpoint and config.json, for `resnet-jax eval` and fine-tuning with `init_from`).

What it may import: `models` and `run` (its errors), and, in `convert` only, `config` and
`training`. The other modules need only NumPy and the standard library (torch for `.pth` files,
safetensors for `.safetensors`, both imported when such a file is read), so the conversion works
with the light install:

  from resnet_jax import pretrained
  variables = pretrained.from_torchvision(state_dict, "resnet50")   # NumPy arrays or torch tensors
  state_dict = pretrained.to_torchvision(variables, "resnet50")
"""

from resnet_jax.pretrained.files import load_state_dict, save_state_dict
from resnet_jax.pretrained.hub import TORCHVISION_WEIGHTS, cache_dir, download, weights_url
from resnet_jax.pretrained.torchvision import NAMES, from_torchvision, infer_name, to_torchvision
from resnet_jax.run.errors import WeightsError


def load_torchvision(name: str, source: str = "DEFAULT", *, head: bool = True,
                     cache: str | None = None) -> dict:
  """Our variables for torchvision's `name` from `source`: a file (.pth, .safetensors, .npz), a URL,
  or a weights name of torchvision's (DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2), downloaded once into
  the cache with its checksum checked. `.pth` files need torch (`pip install 'resnet-jax[torch]'`).
  """
  return from_torchvision(load_state_dict(resolve_source(name, source, cache)), name, head=head)


def resolve_source(name: str, source: str, cache: str | None = None) -> str:
  """The local file `source` names: itself, or the download of a URL or a weights name."""
  import os  # pylint: disable=g-import-not-at-top

  if "://" in source:
    return download(source, cache)
  if os.path.exists(source):
    return source
  if source.upper() == source and not os.path.splitext(source)[1]:  # DEFAULT, IMAGENET1K_V2, ...
    return download(weights_url(name, source), cache)
  raise WeightsError(f"{source!r} is neither a file, a URL, nor one of torchvision's weights names "
                   f"({', '.join(sorted(TORCHVISION_WEIGHTS.get(name, {})))}).")


__all__ = ["NAMES", "from_torchvision", "to_torchvision", "infer_name", "load_state_dict",
           "save_state_dict", "download", "weights_url", "cache_dir", "TORCHVISION_WEIGHTS",
           "load_torchvision", "resolve_source"]
