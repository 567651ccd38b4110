"""Process-level set-up of the `resnet-jax` command: glibc huge pages for XLA:CPU's allocations,
JAX's persistent compilation cache, and no TPU probe on a host without TPU chips.

Library users who want the same speed set the tunable and the cache themselves (docs/PERFORMANCE.md).
"""

import glob
import importlib.util
import os
import platform
import sys

# Opt-out for the re-exec below: RESNET_JAX_HUGEPAGES=0.
HUGEPAGES_ENV = "RESNET_JAX_HUGEPAGES"
_HUGETLB = "glibc.malloc.hugetlb"


def hugepage_environment(environ, libc=None) -> dict | None:
  """The environment to re-exec the command with so that glibc backs large allocations with
  transparent huge pages, or None where that does not apply.

  XLA:CPU allocates a step's temporaries afresh on every call (about 0.5 GB for ResNet-20 at batch
  128) and glibc hands them back to the kernel after it, so every step faults each 4 KB page in again:
  1.5 million page faults for ten ResNet-20 steps. `glibc.malloc.hugetlb=1` (glibc >= 2.35) makes
  those 2 MB pages, which took the ResNet-56 step from 822 to 514 ms (docs/PERFORMANCE.md). glibc
  reads tunables only at process start, hence the re-exec. Elsewhere (not Linux/glibc, an older glibc,
  the tunable already set, or RESNET_JAX_HUGEPAGES=0) nothing changes.
  """
  name, version = libc or platform.libc_ver()
  if sys.platform != "linux" or name != "glibc" or environ.get(HUGEPAGES_ENV) == "0":
    return None
  try:
    if tuple(int(v) for v in version.split(".")[:2]) < (2, 35):
      return None
  except ValueError:
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if _HUGETLB in tunables:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{tunables}:{_HUGETLB}=1" if tunables else f"{_HUGETLB}=1"
  env[HUGEPAGES_ENV] = "0"  # the re-executed process must not do it again
  return env


# Where a TPU VM's chips appear: /dev/accel* (v2-v4), /dev/vfio/<n> (v5e, v5p, v6e).
TPU_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*")
# Where the NVIDIA driver exposes its GPUs.
NVIDIA_DEVICE_FILES = ("/dev/nvidia[0-9]*",)


def platforms_without_tpu_probe(environ, find_spec=importlib.util.find_spec,
                                device_files=TPU_DEVICE_FILES,
                                gpu_device_files=NVIDIA_DEVICE_FILES) -> str | None:
  """The JAX_PLATFORMS value that spares a host without accelerators the plugins' probes, or None.

  With libtpu installed (the `tpu` extra, also in `test`: `resnet-jax compile` uses it), JAX
  initialises it at the first device query; on a host with no TPU chips that prints a screen of
  warnings from libtpu ("could not determine TPU accelerator type", a source-location trace) before
  falling back to the CPU; the CUDA plugin (the `gpu` extra, also in `test`) on a host without an
  NVIDIA GPU fails its start-up check with warnings of its own. Where neither a TPU chip's nor a
  GPU's device file exists, JAX_PLATFORMS=cpu skips the probes. Nothing changes where JAX_PLATFORMS
  is set, no plugin is installed, or a chip or GPU is present (it must stay visible).
  """
  cuda = any(find_spec(name) is not None for name in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
  if environ.get("JAX_PLATFORMS") or (find_spec("libtpu") is None and not cuda):
    return None
  if cuda and any(glob.glob(pattern) for pattern in gpu_device_files):
    return None
  return None if has_tpu_chips(device_files) else "cpu"


def has_tpu_chips(device_files=TPU_DEVICE_FILES) -> bool:
  """Whether a TPU chip's device file exists on this host (a TPU VM)."""
  return any(glob.glob(pattern) for pattern in device_files)


def libtpu_host_defaults(environ, accelerator_type: str,
                         device_files=TPU_DEVICE_FILES) -> dict[str, str]:
  """What libtpu is told of the host where it compiles for a slice without chips, or nothing.

  Loading libtpu (to compile for `accelerator_type`) also makes it describe the host it runs on,
  from a TPU VM's metadata; off a TPU VM it prints a screen of warnings (no accelerator type, no
  worker hostnames, a source-location trace) before the compile's own report. Where no chip's device
  file exists, naming the slice and this one host keeps it quiet; a value already set is kept, and
  on a TPU VM nothing is changed.
  """
  if has_tpu_chips(device_files):
    return {}
  wanted = {"TPU_ACCELERATOR_TYPE": accelerator_type, "TPU_WORKER_HOSTNAMES": "localhost"}
  return {k: v for k, v in wanted.items() if not environ.get(k)}


# The persistent compilation cache: where the command keeps compiled programs between runs.
CACHE_ENV = "RESNET_JAX_CACHE"                     # root of every cache of ours (weights, tfds, jax)
COMPILATION_CACHE_ENV = "RESNET_JAX_COMPILATION_CACHE"  # this cache alone: a folder, or "off"
OFF = "off"


def cache_root(environ=None) -> str:
  """$RESNET_JAX_CACHE, else $XDG_CACHE_HOME/resnet_jax (~/.cache/resnet_jax)."""
  environ = os.environ if environ is None else environ
  if environ.get(CACHE_ENV):
    return environ[CACHE_ENV]
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "resnet_jax")


def compilation_cache_dir(setting: str = "", environ=None) -> str | None:
  """The folder of the persistent compilation cache, or None when it is off.

  `setting` is the config key `compilation_cache_dir`: a folder, "off", or "" for the environment's
  choice ($RESNET_JAX_COMPILATION_CACHE: a folder or "off"), else `cache_root()/jax`.
  """
  environ = os.environ if environ is None else environ
  choice = setting or environ.get(COMPILATION_CACHE_ENV, "")
  if choice.strip().lower() in (OFF, "0", "none", "false"):
    return None
  return os.path.abspath(os.path.expanduser(choice)) if choice else os.path.join(
      cache_root(environ), "jax")


def enable_compilation_cache(setting: str = "") -> str | None:
  """Turns on JAX's persistent compilation cache (see `compilation_cache_dir`); returns its folder.

  Every program is cached whatever its compile time or size: the state initialisation of a ResNet
  takes seconds to compile on CPU, and a resumed or repeated run should compile nothing it compiled
  before. Entries are keyed by the program, the compiler options and the jaxlib version, so a stale
  entry is never used, only left behind. Must run before the first compilation.
  """
  folder = compilation_cache_dir(setting)
  if folder is None:
    return None
  import jax  # pylint: disable=g-import-not-at-top  # the command imports JAX only when it needs it

  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return folder
