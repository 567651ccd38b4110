"""`resnet-jax compile`: the exact step a run would compile, compiled for a TPU slice we do not have.

The trainer is built from the config as a run builds it (model, optimizer, strategy, shardings, K
steps per dispatch, on-device data, remat, scan, dtype), from the data's shapes alone
(`data.spec`) and the slice's compile-only devices (libtpu, `jax.experimental.topologies`), so
nothing is read and no TPU is needed. The train dispatch and the eval step are compiled; the report
gives per chip: the HBM the step needs against the chip's, XLA's FLOPs against the model's counted
FLOPs, the collectives, a roofline estimate of step time and images/s, and how many host cores
decoding images would keep up.
"""

import importlib.util
import math
import re
import time
from typing import Optional

import jax
import ml_collections

from resnet_jax import data, models
from resnet_jax.models import flops as flops_lib
from resnet_jax.run.errors import ConfigError, MissingExtraError
from resnet_jax.targets import analysis, chips
from resnet_jax.training.trainer import Trainer

# XLA's FLOPs and the model's counted FLOPs (3 x the forward's multiply-adds x 2) agree within this
# (measured: 0.94 for ResNet-8 on v5e; XLA also counts BN, ReLU and the optimizer, and the 3x rule is
# an approximation of the backward pass).
FLOPS_TOLERANCE = 0.25
# Images/s one host core decodes and augments (resnet-jax data-bench, 0 threads: one core; README,
# Data), by the kind of input: ImageNet-style JPEGs with inception crops, and CIFAR's 32x32 PNGs.
IMAGES_PER_CORE = {"jpeg": 223.0, "png": 3373.0}
MAX_PER_CHIP_BATCH = 1 << 16  # --max-batch stops doubling here


def devices_of(slice_: chips.Slice) -> list:
  """The slice's compile-only devices (libtpu's topology description)."""
  if importlib.util.find_spec("libtpu") is None:
    raise MissingExtraError("compiling for a TPU slice needs libtpu, which this install leaves out: "
                            "pip install 'resnet-jax[tpu]'")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  return list(topologies.get_topology_desc(topology_name=slice_.topology, platform="tpu",
                                           **slice_.topology_kwargs()).devices)


def find_slice(name: str) -> chips.Slice:
  slice_ = chips.find(name)
  if slice_ is None:
    raise ConfigError(f"unknown TPU topology {name!r}; known: {', '.join(chips.known())}.")
  return slice_


def build(config: ml_collections.ConfigDict, devices: list) -> Trainer:
  """The trainer a run of `config` builds, on `devices`, from the data's shapes alone."""
  if config.parallelism != "jit":
    raise ConfigError(f"parallelism={config.parallelism!r}: `resnet-jax compile` compiles the jit "
                      "strategy over the slice's mesh; jax.pmap programs cannot be compiled ahead of "
                      "time for devices this host does not have. Set --config.parallelism=jit.")
  spec = data.spec(config, models.default_image_size(config.model))
  if spec is None:
    raise ConfigError(f"dataset={config.dataset!r}: compiling needs the images' shape without reading "
                      f"them, known for {', '.join(['digits', 'synthetic', *data.KNOWN_TFDS])}. Use "
                      "--config.dataset=synthetic with image_size, synthetic_channels and num_classes.")
  config = config.copy_and_resolve_references()
  config.num_devices = 0  # every device of the slice
  return Trainer(config, data=spec, devices=devices)


def compile_step(trainer: Trainer) -> dict:
  """Compiles the train dispatch and the eval step; returns their analyses and compile times."""
  k = trainer.config.steps_per_dispatch
  sharding = trainer.strategy.replicated
  state = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                                 trainer.abstract_state())
  fn, args = trainer.dispatch_call(0, k, abstract=True)
  t0 = time.perf_counter()
  train = fn.lower(state, *args).compile()
  t1 = time.perf_counter()
  evaluate = trainer.strategy.eval_step.lower(state, trainer.abstract_eval_batch()).compile()
  t2 = time.perf_counter()
  return {"train": train, "eval": evaluate, "compile_s": {"train": t1 - t0, "eval": t2 - t1}}


def report(config: ml_collections.ConfigDict, slice_: chips.Slice, devices: list,
           trainer: Trainer, compiled: dict) -> dict:
  """Per chip: HBM fit, FLOPs, collectives, roofline, host cores; everything a user needs to decide."""
  chip, per_device = slice_.chip, slice_.devices_per_chip  # figures per chip; JAX's devices per chip
  n = len(devices) // per_device  # chips
  per_chip = config.batch_size // n
  train_mem, eval_mem = analysis.memory(compiled["train"]), analysis.memory(compiled["eval"])
  cost = analysis.costs(compiled["train"])
  comms = analysis.collectives(compiled["train"].as_text())
  # XLA's figures are per device (per TensorCore on v3): per chip, times the devices of a chip.
  xla_flops, step_bytes, comm_bytes = (per_device * x for x in _per_step(cost, comms))
  counted = 3 * 2 * flops_lib.count_macs(trainer.model, trainer.image_shape[0],
                                         trainer.image_shape[-1]) * per_chip
  roof = analysis.roofline(xla_flops, step_bytes, comm_bytes, chip, n)
  needed = per_device * max(train_mem["needed"], eval_mem["needed"])
  hosts = len({d.process_index for d in devices})
  images_per_s = per_chip / roof.step_s
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(
      trainer.abstract_state().params))
  return {
      **_header(config, slice_, devices),
      "hbm": {"needed": needed, "chip": chip.hbm_bytes, "fits": needed <= chip.hbm_bytes,
              "margin": chip.hbm_bytes - needed, "train": train_mem, "eval": eval_mem},
      "flops": {"xla_per_step": xla_flops, "counted_per_step": counted,
                "ratio": xla_flops / counted if counted else math.nan,
                "tolerance": FLOPS_TOLERANCE, "note": _flops_note(config, xla_flops, counted)},
      "collectives": comms, "collective_bytes_per_step": comm_bytes, "param_bytes": param_bytes,
      "estimate": {"step_ms": 1e3 * roof.step_s, "compute_ms": 1e3 * roof.compute_s,
                   "hbm_ms": 1e3 * roof.memory_s, "interconnect_ms": 1e3 * roof.collective_s,
                   "bound": roof.bound, "images_per_sec_per_chip": images_per_s},
      "host": _host(config, slice_, images_per_s, n // hosts),
      "compile_s": compiled["compile_s"], "chip_source": chip.source,
  }


def _header(config: ml_collections.ConfigDict, slice_: chips.Slice, devices: list) -> dict:
  """What was compiled, for where: the fields every report starts with."""
  n = len(devices) // slice_.devices_per_chip  # chips
  return {"topology": slice_.name, "libtpu_topology": slice_.topology, "chip": slice_.chip.name,
          "chips": n, "devices_per_chip": slice_.devices_per_chip,
          "hosts": len({d.process_index for d in devices}), "model": config.model,
          "dtype": config.dtype, "batch_size": config.batch_size,
          "batch_per_chip": config.batch_size // n, "steps_per_dispatch": config.steps_per_dispatch}


def _per_step(cost: dict, comms: dict) -> tuple[float, float, float]:
  """FLOPs, HBM bytes and collective bytes of one step, from the dispatch's figures.

  On TPU the K steps of a dispatch are a loop (`lax.scan`), and XLA's analyses count a loop's body
  once: its figures are already one step's. (On CPU the K steps are unrolled; see parallel.scan.)
  """
  return cost["flops"], cost["bytes_accessed"], float(sum(c["bytes"] for c in comms.values()))


def _flops_note(config, xla: float, counted: float) -> str:
  ratio = xla / counted if counted else math.nan
  if abs(ratio - 1) <= FLOPS_TOLERANCE:
    return f"agree within {FLOPS_TOLERANCE:.0%}"
  reasons = []
  if config.scan_blocks:
    reasons.append("scan_blocks: XLA's cost analysis counts a scanned stage's loop body once, not "
                   "once per block")
  if config.remat_blocks:
    reasons.append("remat_blocks: every block's forward runs again in the backward pass (~4x the "
                   "forward instead of 3x)")
  if config.data_on_device:
    reasons.append("data_on_device: drawing and augmenting the batch adds gathers, not FLOPs")
  return "; ".join(reasons) or ("outside the tolerance for a reason not identified: XLA counts BN, "
                                "ReLU and the optimizer, and the 3x rule approximates the backward")


def _host(config, slice_: chips.Slice, images_per_s_per_chip: float, chips_per_host: int) -> dict:
  """Host cores needed to decode and augment the images the chips consume, against the TPU VM's."""
  vcpus = slice_.chip.vcpus_per_chip * chips_per_host
  if config.data_on_device or config.dataset in ("digits", "synthetic"):
    return {"input": "on the device / in memory: no decoding per step", "cores_needed": 0.0,
            "vcpus": vcpus}
  kind = "png" if data.spec(config, models.default_image_size(config.model)).fixed_size else "jpeg"
  needed = images_per_s_per_chip * chips_per_host / IMAGES_PER_CORE[kind]
  return {"input": f"{kind} decoded on the host at {IMAGES_PER_CORE[kind]:.0f} images/s per core",
          "cores_needed": needed, "vcpus": vcpus}


def compile_for(config: ml_collections.ConfigDict, topology: str,
                per_chip_batch: Optional[int] = None) -> dict:
  """Builds, compiles and reports the config's step on the slice `topology` (see module doc)."""
  slice_ = find_slice(topology)
  devices = devices_of(slice_)
  if per_chip_batch is not None:
    config = config.copy_and_resolve_references()
    config.batch_size = per_chip_batch * (len(devices) // slice_.devices_per_chip)
  trainer = build(config, devices)
  try:
    compiled = compile_step(trainer)
  except Exception as e:  # pylint: disable=broad-except
    if not out_of_hbm(str(e)):
      raise
    return not_fitting(config, slice_, devices, str(e))
  return report(config, slice_, devices, trainer, compiled)


# libtpu refuses to compile a program whose buffers exceed the chip's HBM, instead of compiling it:
# "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries
# (16.46G) exceeds available HBM (15.75G)". That is the answer "does not fit", not a failure.
_OUT_OF_HBM = re.compile(r"\(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)")


def out_of_hbm(message: str) -> bool:
  return "RESOURCE_EXHAUSTED" in message and "HBM" in message


def not_fitting(config: ml_collections.ConfigDict, slice_: chips.Slice, devices: list,
                message: str) -> dict:
  """The report of a step the compiler refused for want of HBM: what it needed, per chip, if said."""
  found = _OUT_OF_HBM.search(message)
  # The compiler's figures are per device (per TensorCore on v3), in GiB.
  needed = slice_.devices_per_chip * float(found.group(1)) * 2**30 if found else math.nan
  line = next((l.strip() for l in message.splitlines() if "RESOURCE_EXHAUSTED" in l), message)
  return {**_header(config, slice_, devices),
          "hbm": {"needed": needed, "chip": slice_.chip.hbm_bytes, "fits": False,
                  "margin": slice_.chip.hbm_bytes - needed, "compiler": line},
          "chip_source": slice_.chip.source}


def max_batch(config: ml_collections.ConfigDict, topology: str, say=print) -> tuple[int, dict]:
  """The largest per-chip batch whose step fits the chip's HBM: doubling, then bisection over
  compiles (multiples of 8, TPU's sublane tile). Returns (batch per chip, its report)."""
  slice_ = find_slice(topology)
  n = len(devices_of(slice_)) // slice_.devices_per_chip  # chips (a v3 chip is two devices)
  fits = {}

  def fit(b: int) -> bool:
    if b not in fits:
      r = compile_for(config, topology, b)
      fits[b] = r
      say(f"batch {b} per chip: {r['hbm']['needed'] / 2**30:.2f} GiB of "
          f"{r['hbm']['chip'] / 2**30:.0f} GiB, {'fits' if r['hbm']['fits'] else 'does not fit'}")
    return fits[b]["hbm"]["fits"]

  start = max(8, config.batch_size // n // 8 * 8)
  if fit(start):  # double until one does not fit
    low, high = start, None
    while high is None:
      if 2 * low > MAX_PER_CHIP_BATCH:
        return low, fits[low]
      low, high = (2 * low, None) if fit(2 * low) else (low, 2 * low)
  else:  # halve until one fits
    low, high = None, start
    while low is None:
      if high // 2 < 8:
        return 0, fits[high]
      low, high = (high // 2 // 8 * 8, high) if fit(high // 2 // 8 * 8) else (None, high // 2 // 8 * 8)
  while high - low > 8:  # bisect, in multiples of 8
    mid = (low + high) // 2 // 8 * 8
    low, high = (mid, high) if fit(mid) else (low, mid)
  return low, fits[low]
