"""The accelerators we compile for without having them: Cloud TPU slices and their chips' published
figures, each with its source.

A slice is named as Cloud TPU names it when you create one (`--accelerator-type v5litepod-8`, here
`v5e-8`), or by the topology libtpu takes (`v5e:2x4`). Each maps to libtpu's compile-only topology
(`jax.experimental.topologies`): its chip grid, the chips one host drives, and for v4 and v5p the
"megacore" layout in which JAX sees one device per chip.

Figures are per chip, as published by Google Cloud (the pages cited below, read 2026-12-01): peak
bf16 FLOP/s (the MXUs; float32 matmuls and convolutions run on them too, at JAX's default precision
one bf16 pass, so the same peak applies), HBM capacity and bandwidth, the all-reduce bandwidth the
inter-chip interconnect (ICI) gives each chip, and the host vCPUs per chip of the TPU VM.
"""

import dataclasses
from typing import Optional

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  peak_flops: float          # bf16 FLOP/s per chip (dense)
  hbm_bytes: int             # HBM capacity per chip
  hbm_bandwidth: float       # bytes/s per chip
  allreduce_bandwidth: float  # bytes/s per chip: the Pod's published all-reduce bandwidth / its
                             # chips, or half the chip's bidirectional ICI where that is published
  vcpus_per_chip: float      # the TPU VM's vCPUs divided by the chips it drives
  source: str
  peak_flops_f32: Optional[float] = None  # FLOP/s of float32 convolutions and matmuls, where they
                                          # run slower than bf16 (GPUs: TF32); None: peak_flops

  def peak(self, dtype: str) -> float:
    """Peak FLOP/s of the step's convolutions in the compute dtype `dtype`."""
    if dtype == "float32" and self.peak_flops_f32 is not None:
      return self.peak_flops_f32
    return self.peak_flops


CHIPS = {
    "v3": Chip("TPU v3", 123e12, 32 * GIB, 900e9, 340e12 / 1024, 96 / 4,
               "cloud.google.com/tpu/docs/v3: 123 TFLOP/s bf16, 32 GiB HBM at 900 GB/s, all-reduce "
               "340 TB/s per 1,024-chip Pod; a v3-8 host: 96 vCPUs for 4 chips"),
    "v4": Chip("TPU v4", 275e12, 32 * GIB, 1200e9, 1.1e15 / 4096, 240 / 4,
               "cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM at 1,200 GB/s, all-reduce "
               "1.1 PB/s per 4,096-chip Pod; a host: 240 vCPUs for 4 chips"),
    "v5e": Chip("TPU v5e", 197e12, 16 * GIB, 819e9, 51.2e12 / 256, 224 / 8,
                "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GiB HBM at 819 GB/s, all-reduce "
                "51.2 TB/s per 256-chip Pod; ct5lp-hightpu-8t: 224 vCPUs for 8 chips"),
    "v5p": Chip("TPU v5p", 459e12, 95 * GIB, 2765e9, 1200e9 / 2, 208 / 4,
                "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GiB HBM at 2,765 GB/s, ICI 1,200 "
                "GB/s bidirectional per chip; a 4-chip VM: 208 vCPUs"),
    "v6e": Chip("TPU v6e", 918e12, 32 * GIB, 1640e9, 102.4e12 / 256, 180 / 8,
                "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM at 1,640 GB/s, all-reduce "
                "102.4 TB/s per 256-chip Pod; ct6e-standard-8t: 180 vCPUs for 8 chips"),
}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice: the topology libtpu compiles for, and what drives it."""
  name: str                # Cloud TPU's accelerator type, e.g. v5e-8
  topology: str            # libtpu's topology name, e.g. v5e:2x4
  generation: str          # key of CHIPS
  chips_per_host: tuple    # libtpu's chips_per_host_bounds (x, y, z)
  megacore: bool = False   # v4, v5p: one JAX device per chip (its two TensorCores fused)
  devices_per_chip: int = 1  # v3: JAX sees each of a chip's two TensorCores as a device

  @property
  def chip(self) -> Chip:
    return CHIPS[self.generation]

  @property
  def cloud_name(self) -> str:
    """The accelerator type `gcloud` creates it by (and libtpu reads): v5e's is v5litepod-N."""
    return self.name.replace("v5e-", "v5litepod-")

  def topology_kwargs(self) -> dict:
    kwargs = {"chips_per_host_bounds": self.chips_per_host}
    if self.megacore:
      kwargs["chip_config_name"] = "megacore"
    return kwargs


def _slices():
  out = {}
  def add(name, topology, generation, host, megacore=False, devices_per_chip=1):
    out[name] = Slice(name, topology, generation, host, megacore, devices_per_chip)
  add("v3-8", "v3:2x2", "v3", (2, 2, 1), devices_per_chip=2)
  add("v4-8", "v4:2x2x1", "v4", (2, 2, 1), megacore=True)
  add("v4-16", "v4:2x2x2", "v4", (2, 2, 1), megacore=True)
  add("v4-32", "v4:2x2x4", "v4", (2, 2, 1), megacore=True)
  add("v5e-1", "v5e:1x1", "v5e", (1, 1, 1))
  add("v5e-4", "v5e:2x2", "v5e", (2, 2, 1))
  add("v5e-8", "v5e:2x4", "v5e", (2, 4, 1))
  add("v5e-16", "v5e:4x4", "v5e", (2, 2, 1))  # multi-host training slices: 4-chip hosts
  add("v5e-32", "v5e:4x8", "v5e", (2, 2, 1))
  add("v5p-8", "v5p:2x2x1", "v5p", (2, 2, 1), megacore=True)
  add("v5p-16", "v5p:2x2x2", "v5p", (2, 2, 1), megacore=True)
  add("v6e-1", "v6e:1x1", "v6e", (1, 1, 1))
  add("v6e-4", "v6e:2x2", "v6e", (2, 2, 1))
  add("v6e-8", "v6e:2x4", "v6e", (2, 4, 1))
  add("v6e-16", "v6e:4x4", "v6e", (2, 2, 1))
  return out


# Cloud TPU's accelerator types we know, by name; `find` also takes their libtpu topology names.
SLICES = _slices()
ALIASES = {"v5litepod-" + n.split("-")[1]: n for n in SLICES if n.startswith("v5e-")}


def find(name: str) -> Optional[Slice]:
  """The slice called `name` (v5e-8, v5litepod-8 or v5e:2x4), or None."""
  name = ALIASES.get(name, name)
  if name in SLICES:
    return SLICES[name]
  return next((s for s in SLICES.values() if s.topology == name), None)


def known() -> list[str]:
  return [f"{s.name} ({s.topology})" for s in SLICES.values()]
