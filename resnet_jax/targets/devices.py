"""The targets `resnet-jax compile` knows by name (TPU slices and GPU machines) and their compile-only
devices: libtpu's topology for a slice, the CUDA plugin's for a GPU machine, so that a step compiles
for hardware this host does not have."""

import importlib.metadata
import importlib.util
import os
import re
from typing import Union

from resnet_jax.run.errors import ConfigError, MissingExtraError
from resnet_jax.targets import chips, gpu

Target = Union[chips.Slice, gpu.Target]


def find_target(name: str) -> Target:
  """The TPU slice or GPU machine called `name`; an unknown name is a user's mistake."""
  found = chips.find(name) or gpu.find(name)
  if found is None:
    raise ConfigError(f"unknown TPU topology or GPU machine {name!r}; known: {', '.join(chips.known())}; "
                      f"GPU machines: {', '.join(gpu.known())}.")
  return found


def is_gpu(target: Target) -> bool:
  return isinstance(target, gpu.Target)


def devices_of(target: Target) -> list:
  """The target's compile-only devices (libtpu's or the CUDA plugin's topology description)."""
  if is_gpu(target):
    return _gpu_devices(target)
  if importlib.util.find_spec("libtpu") is None:
    raise MissingExtraError("compiling for a TPU slice needs libtpu, which this install leaves out: "
                            "pip install 'resnet-jax[tpu]'")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  return list(topologies.get_topology_desc(topology_name=target.topology, platform="tpu",
                                           **target.topology_kwargs()).devices)


def _gpu_devices(target: gpu.Target) -> list:
  if importlib.util.find_spec("jax_cuda12_plugin") is None:
    raise MissingExtraError("compiling for a GPU machine needs the CUDA plugin, which this install "
                            "leaves out: pip install 'resnet-jax[gpu]'")
  os.environ.update(gpu.environment(os.environ))  # in time unless JAX's backends already started
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  config = gpu.target_config(target.gpu, _version("nvidia-cudnn-cu12"),
                             _version("nvidia-cuda-runtime-cu12"))
  return list(topologies.get_topology_desc(platform="cuda", target_config=config,
                                           topology=target.topology).devices)


def _version(package: str) -> tuple:
  """(major, minor, 0) of an NVIDIA library: the installed one (`jax[cuda12]`), which a run would
  load, or else the oldest the CUDA plugin accepts (`jax[cuda12-local]`, the `gpu` extra: the
  plugin compiles without NVIDIA's wheels, to the same optimised program; checked for ResNet-8)."""
  try:
    version = importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    wanted = [r for r in importlib.metadata.requires("jax-cuda12-plugin") or ()
              if r.startswith(package)]
    found = re.search(r">=\s*([\d.]+)", wanted[0]) if wanted else None
    if found is None:
      raise
    version = found.group(1)
  major, minor = version.split(".")[:2]
  return int(major), int(minor), 0
