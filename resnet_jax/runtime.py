"""Process-level set-up of the `resnet-jax` command: glibc huge pages for XLA:CPU's allocations.

Library users who want the same speed set the tunable themselves (docs/PERFORMANCE.md).
"""

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
