"""The GPU machines we compile for without having them: NVIDIA GPUs by their published figures, the
cloud machines that carry them, and the target configuration XLA:GPU compiles for.

A machine is named `<gpu>-<count>` (`h100-8`: one host with 8 H100s; `h100-16`: two such hosts), or
by the Compute Engine machine type that carries it (`a3-highgpu-8g`). Each maps to the CUDA plugin's
compile-only topology (`jax.experimental.topologies.get_topology_desc(platform="cuda",
topology="<slices>x<hosts>x<gpus per host>", target_config=...)`, as in jax-ml/jax#28376 and
openxla/xla#16913), whose `target_config` is a `GpuTargetConfigProto` in text form: the device
description XLA:GPU would otherwise read from the GPU (`TargetConfig::ToString()`; openxla/xla
`xla/tools/hlo_opt/gpu_specs`).

Every field below is a published figure, cited beside it: per GPU model from NVIDIA's datasheets
and architecture whitepapers (read 2026-12-02), and per compute capability from the CUDA C++
Programming Guide's table "Technical Specifications per Compute Capability". A datasheet's memory
in GB is read as 10^9 bytes, a little below what the device reports (an H100 80GB shows 79.6 GiB),
so a step that fits here fits there. What no datasheet gives, the compiler does not need: XLA's
autotuner would time kernels on the GPU, and here picks its default kernels instead (autotuning is
off: `xla_gpu_autotune_level=0`).
"""

import dataclasses
from typing import Optional

from resnet_jax.targets import chips

GB = 10**9


@dataclasses.dataclass(frozen=True)
class ComputeCapability:
  """What CUDA allows per streaming multiprocessor (SM) and per block, by compute capability.

  Source: CUDA C++ Programming Guide, "Technical Specifications per Compute Capability" (shared
  memory per SM and the opt-in maximum per block; resident threads per SM; 64 K 32-bit registers
  per SM and per block; 1,024 threads per block; warps of 32; grid limits 2^31-1 x 65,535 x 65,535).
  """
  major: int
  minor: int
  shared_memory_per_sm: int       # bytes
  shared_memory_per_block_optin: int  # bytes (a block may opt in to this much; 48 KiB without)
  threads_per_sm: int


CAPABILITIES = {
    (8, 0): ComputeCapability(8, 0, 164 * 1024, 163 * 1024, 2048),  # A100
    (8, 9): ComputeCapability(8, 9, 100 * 1024, 99 * 1024, 1536),   # L4 (Ada)
    (9, 0): ComputeCapability(9, 0, 228 * 1024, 227 * 1024, 2048),  # H100, H200
}


@dataclasses.dataclass(frozen=True)
class Gpu:
  """One GPU model's published figures (dense Tensor Core peaks: a datasheet's "with sparsity"
  figure halved)."""
  name: str                 # as the driver names it (the target config's description)
  capability: tuple         # key of CAPABILITIES
  sms: int                  # streaming multiprocessors
  fp32_cores_per_sm: int
  memory_bytes: int
  memory_bandwidth: float   # bytes/s
  l2_bytes: int
  boost_clock_ghz: float
  peak_bf16: float          # FLOP/s, dense bf16 Tensor Core
  peak_tf32: float          # FLOP/s, dense TF32 Tensor Core: float32 convolutions and matmuls at
                            # JAX's default precision (`lax.Precision.DEFAULT`) run as TF32 on GPUs
                            # that have it
  nvlink_bandwidth: float   # bytes/s per GPU, both directions together (PCIe where no NVLink)
  source: str


MIB = 2**20
GPUS = {
    "h100": Gpu("NVIDIA H100 80GB HBM3", (9, 0), 132, 128, 80 * GB, 3.35e12, 50 * MIB, 1.98,
                989e12, 494.5e12, 900e9,
                "nvidia.com/en-us/data-center/h100 (H100 SXM datasheet): 80 GB HBM3 at 3.35 TB/s, "
                "bf16 1,979 and TF32 989 TFLOP/s with sparsity, NVLink 900 GB/s; NVIDIA H100 Tensor "
                "Core GPU Architecture whitepaper: 132 SMs (SXM5) of 128 FP32 cores, 50 MB L2, "
                "1,980 MHz boost"),
    "h200": Gpu("NVIDIA H200", (9, 0), 132, 128, 141 * GB, 4.8e12, 50 * MIB, 1.98,
                989e12, 494.5e12, 900e9,
                "nvidia.com/en-us/data-center/h200 (H200 SXM datasheet): 141 GB HBM3e at 4.8 TB/s, "
                "bf16 1,979 and TF32 989 TFLOP/s with sparsity, NVLink 900 GB/s; the same GH100 "
                "die as H100 SXM5 (its whitepaper: 132 SMs, 50 MB L2, 1,980 MHz)"),
    "a100-40gb": Gpu("NVIDIA A100-SXM4-40GB", (8, 0), 108, 64, 40 * GB, 1.555e12, 40 * MIB, 1.41,
                     312e12, 156e12, 600e9,
                     "nvidia.com/en-us/data-center/a100 (A100 datasheet): 40 GB HBM2 at 1,555 GB/s, "
                     "bf16 312 and TF32 156 TFLOP/s dense, NVLink 600 GB/s; NVIDIA A100 Tensor Core "
                     "GPU Architecture whitepaper: 108 SMs of 64 FP32 cores, 40 MB L2, 1,410 MHz"),
    "a100-80gb": Gpu("NVIDIA A100-SXM4-80GB", (8, 0), 108, 64, 80 * GB, 2.039e12, 40 * MIB, 1.41,
                     312e12, 156e12, 600e9,
                     "nvidia.com/en-us/data-center/a100 (A100 datasheet): 80 GB HBM2e at 2,039 GB/s, "
                     "bf16 312 and TF32 156 TFLOP/s dense, NVLink 600 GB/s; NVIDIA A100 Tensor Core "
                     "GPU Architecture whitepaper: 108 SMs of 64 FP32 cores, 40 MB L2, 1,410 MHz"),
    "l4": Gpu("NVIDIA L4", (8, 9), 58, 128, 24 * GB, 300e9, 48 * MIB, 2.04, 121e12, 60e12, 64e9,
              "nvidia.com/en-us/data-center/l4 (L4 datasheet): 24 GB GDDR6 at 300 GB/s, bf16 242 and "
              "TF32 120 TFLOP/s with sparsity, PCIe Gen4 x16 64 GB/s (no NVLink), 7,424 CUDA cores "
              "(58 SMs of 128), 48 MB L2, 2,040 MHz boost"),
}


@dataclasses.dataclass(frozen=True)
class Machine:
  """A cloud machine type: its GPUs, vCPUs, and network bandwidth to other hosts."""
  name: str
  gpu: str              # key of GPUS
  gpus: int
  vcpus: int
  network_gbps: float   # the VM's GPU-to-GPU network, for a run over several hosts


# Compute Engine (cloud.google.com/compute/docs/accelerator-optimized-machines and
# .../gpus/gpu-network-bandwidth, read 2026-12-02): A3 High 1,000 Gbps, A3 Ultra 3,200 Gbps for
# GPU-to-GPU traffic (of 3,600), A2 and G2 100 Gbps.
MACHINES = {m.name: m for m in (
    Machine("a3-highgpu-1g", "h100", 1, 26, 1000), Machine("a3-highgpu-2g", "h100", 2, 52, 1000),
    Machine("a3-highgpu-4g", "h100", 4, 104, 1000), Machine("a3-highgpu-8g", "h100", 8, 208, 1000),
    Machine("a3-ultragpu-8g", "h200", 8, 224, 3200),
    Machine("a2-highgpu-1g", "a100-40gb", 1, 12, 100), Machine("a2-highgpu-2g", "a100-40gb", 2, 24, 100),
    Machine("a2-highgpu-4g", "a100-40gb", 4, 48, 100), Machine("a2-highgpu-8g", "a100-40gb", 8, 96, 100),
    Machine("a2-ultragpu-1g", "a100-80gb", 1, 12, 100), Machine("a2-ultragpu-2g", "a100-80gb", 2, 24, 100),
    Machine("a2-ultragpu-4g", "a100-80gb", 4, 48, 100), Machine("a2-ultragpu-8g", "a100-80gb", 8, 96, 100),
    Machine("g2-standard-8", "l4", 1, 8, 16), Machine("g2-standard-24", "l4", 2, 24, 32),
    Machine("g2-standard-48", "l4", 4, 48, 50), Machine("g2-standard-96", "l4", 8, 96, 100),
)}

# What deviceless compilation for CUDA needs of the process, set by `resnet-jax compile` before JAX
# is imported (JAX reads JAX_PLATFORMS then). Checked on a host without a GPU or driver (jax 0.10.2):
# with neither of the first two, the CUDA plugin's start-up calls cuInit, fails, and the plugin is
# not registered ("topology not implemented for cuda"); at autotune level 0 XLA times no kernels
# (there is no GPU to time them on) and takes its default kernel for each operation.
GPU_ENVIRONMENT = {"JAX_PLATFORMS": "cpu", "JAX_SKIP_CUDA_CONSTRAINTS_CHECK": "1"}
GPU_XLA_FLAGS = "--xla_gpu_autotune_level=0"


def environment(environ) -> dict:
  """The variables to set for compiling for CUDA without a GPU (see GPU_ENVIRONMENT)."""
  flags = environ.get("XLA_FLAGS", "")
  if "xla_gpu_autotune_level" not in flags:
    flags = f"{flags} {GPU_XLA_FLAGS}".strip()
  return {**GPU_ENVIRONMENT, "XLA_FLAGS": flags}


# JAX preallocates this fraction of a GPU's memory for XLA's buffers, unless
# XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise (docs.jax.dev, "GPU memory allocation").
DEFAULT_MEM_FRACTION = 0.75


@dataclasses.dataclass(frozen=True)
class Target:
  """GPUs on one or more hosts of one machine type: what `resnet-jax compile` compiles for."""
  name: str          # e.g. h100-8
  machine: Machine
  hosts: int = 1
  devices_per_chip: int = 1  # one JAX device per GPU (the TPU report's field)

  @property
  def gpu(self) -> Gpu:
    return GPUS[self.machine.gpu]

  @property
  def topology(self) -> str:
    """The CUDA plugin's topology: `<slices>x<hosts per slice>x<GPUs per host>`."""
    return f"1x{self.hosts}x{self.machine.gpus}"

  @property
  def cloud_name(self) -> str:
    return self.machine.name if self.hosts == 1 else f"{self.hosts} x {self.machine.name}"

  @property
  def chip(self) -> chips.Chip:
    """The GPU as the report's roofline reads a chip: the all-reduce goes over NVLink (half its
    two-way figure, as for TPU ICI) within a host, and over each GPU's share of the VM's network
    across hosts."""
    g = self.gpu
    if self.hosts > 1:
      allreduce = self.machine.network_gbps * 1e9 / 8 / self.machine.gpus
    else:
      allreduce = g.nvlink_bandwidth / 2
    return chips.Chip(g.name, g.peak_bf16, g.memory_bytes, g.memory_bandwidth, allreduce,
                      self.machine.vcpus / self.machine.gpus, g.source, peak_flops_f32=g.peak_tf32)


def _targets() -> dict:
  out = {}
  # The machine each count comes in by default: the 80 GB A3 High for H100, A2 Ultra for A100 80 GB.
  for gpu, family in (("h100", "a3-highgpu-{}g"), ("a100-40gb", "a2-highgpu-{}g"),
                      ("a100-80gb", "a2-ultragpu-{}g")):
    for n in (1, 2, 4, 8):
      out[f"{gpu}-{n}"] = Target(f"{gpu}-{n}", MACHINES[family.format(n)])
    out[f"{gpu}-16"] = Target(f"{gpu}-16", MACHINES[family.format(8)], hosts=2)
  out["h200-8"] = Target("h200-8", MACHINES["a3-ultragpu-8g"])
  out["h200-16"] = Target("h200-16", MACHINES["a3-ultragpu-8g"], hosts=2)
  for n, machine in ((1, "g2-standard-8"), (2, "g2-standard-24"), (4, "g2-standard-48"),
                     (8, "g2-standard-96")):
    out[f"l4-{n}"] = Target(f"l4-{n}", MACHINES[machine])
  return out


TARGETS = _targets()
# A machine type names its single-host target; `a100-8` the 40 GB one (A2 Standard's).
ALIASES = {**{t.machine.name: n for n, t in TARGETS.items() if t.hosts == 1},
           **{f"a100-{n}": f"a100-40gb-{n}" for n in (1, 2, 4, 8, 16)}}


def find(name: str) -> Optional[Target]:
  """The GPU target called `name` (h100-8, a3-highgpu-8g), or None."""
  name = name.lower()
  return TARGETS.get(ALIASES.get(name, name))


def known() -> list[str]:
  return [f"{n} ({t.cloud_name})" for n, t in TARGETS.items()]


def target_config(gpu: Gpu, cudnn: tuple, cuda: tuple) -> str:
  """The `GpuTargetConfigProto` text XLA:GPU compiles for: `gpu`'s device description, and the
  cuDNN and CUDA runtime versions (major, minor, patch) the program will run with."""
  cc = CAPABILITIES[gpu.capability]
  version = lambda v: " ".join(f"{k}: {x}" for k, x in zip(("major", "minor", "patch"), v))
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: {48 * 1024}
  shared_memory_per_core: {cc.shared_memory_per_sm}
  threads_per_core_limit: {cc.threads_per_sm}
  core_count: {gpu.sms}
  fpus_per_core: {gpu.fp32_cores_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(gpu.memory_bandwidth)}
  l2_cache_size: {gpu.l2_bytes}
  clock_rate_ghz: {gpu.boost_clock_ghz}
  device_memory_size: {gpu.memory_bytes}
  shared_memory_per_block_optin: {cc.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {cc.major} minor: {cc.minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ {version(cudnn)} }}
runtime_version {{ {version(cuda)} }}
device_description_str: "{gpu.name}"
"""
