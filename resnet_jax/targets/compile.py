"""`resnet-jax compile`: the exact step a run would compile, compiled for a TPU slice or GPU machine
we do not have.

The trainer is built from the config as a run builds it (model, optimizer, strategy, shardings, K
steps per dispatch, on-device data, remat, scan, dtype), from the data's shapes alone
(`training.derived.data_spec`) and the target's compile-only devices (`jax.experimental.topologies`:
libtpu for a slice, the CUDA plugin with a GPU's description for a GPU machine), so nothing is read
and no accelerator is needed. The train dispatch and the eval step are compiled; the report gives
per chip (per GPU): the memory the step needs against the chip's, XLA's FLOPs against the model's
counted FLOPs, the collectives, a roofline estimate of step time and images/s, and how many host cores
decoding images would keep up.
"""

import contextlib
import math
import os
import re
import time
from typing import Optional

import jax
import ml_collections

from resnet_jax import data
from resnet_jax.models import flops as flops_lib
from resnet_jax.run import console
from resnet_jax.run.errors import ConfigError
from resnet_jax.targets import analysis, gpu
from resnet_jax.targets import devices as devices_lib
from resnet_jax.training import derived
from resnet_jax.training.trainer import Trainer

# XLA's FLOPs and the model's counted FLOPs (3 x the forward's multiply-adds x 2) agree within this
# (measured: 0.94 for ResNet-8 on v5e; XLA also counts BN, ReLU and the optimizer, and the 3x rule is
# an approximation of the backward pass).
FLOPS_TOLERANCE = 0.25
# Images/s one host core decodes and augments, by the kind of input. JPEG: photographs (300-500 px,
# ~44 KiB) through the training pipeline as a run's host does it (libjpeg-turbo decode, inception
# crop, resize 224, flip; uint8 out, normalised on the device), images per CPU-second of one pinned
# core, `python benchmarks/input_pipeline.py` (median of 3 rounds; 1.04-1.09x tf.data's in the same
# run) on an Intel(R) Xeon(R) Processor (2 cores, shared), 2026-12-03
# (docs/results/input_pipeline; 527 before, PIL decode and host normalisation). PNG: CIFAR's
# 32x32 images, `resnet-jax data-bench` with 0 threads (README, Data).
IMAGES_PER_CORE = {"jpeg": 786.0, "png": 3373.0}
RATE_MEASURED_ON = {"jpeg": "one Intel Xeon core, benchmarks/input_pipeline.py",
                    "png": "one core, resnet-jax data-bench"}

def build(config: ml_collections.ConfigDict, devices: list) -> Trainer:
  """The trainer a run of `config` builds, on `devices`, from the data's shapes alone."""
  if config.parallelism != "jit":
    raise ConfigError(f"parallelism={config.parallelism!r}: `resnet-jax compile` compiles the jit "
                      "strategy over the target's mesh; jax.pmap programs cannot be compiled ahead of "
                      "time for devices this host does not have. Set --config.parallelism=jit.")
  spec = derived.data_spec(config)  # with the config's image_size, as a run's (was the model's)
  if spec is None:
    raise ConfigError(f"dataset={config.dataset!r}: compiling needs the images' shape without reading "
                      f"them, known for {', '.join(['digits', 'synthetic', *data.KNOWN_TFDS])}. Use "
                      "--config.dataset=synthetic with image_size, synthetic_channels and num_classes.")
  config = config.copy_and_resolve_references()
  config.num_devices = 0  # every device of the slice
  return Trainer(config, data=spec, devices=devices)


def compile_step(trainer: Trainer, say=None) -> dict:
  """Compiles the train dispatch and the eval step, naming each phase on `say`'s console; returns
  the compiled programs, the train dispatch as lowered, and each phase's seconds."""
  say = say or (lambda text: None)
  k = trainer.config.steps_per_dispatch
  sharding = trainer.strategy.replicated
  state = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                                 trainer.abstract_state())
  fn, args = trainer.dispatch_call(0, k, abstract=True)
  seconds = {}
  with _timed(say, "lowering the train step", seconds, "lower"):
    lowered = fn.lower(state, *args)
  with _timed(say, "compiling the train step", seconds, "compile train"):
    train = lowered.compile()
  with _timed(say, "compiling the eval step", seconds, "compile eval"):
    evaluate = trainer.strategy.eval_step.lower(state, trainer.abstract_eval_batch()).compile()
  return {"train": train, "eval": evaluate, "train_lowered": lowered, "phases_s": seconds,
          "compile_s": {"train": seconds["lower"] + seconds["compile train"],
                        "eval": seconds["compile eval"]}}


@contextlib.contextmanager
def _timed(say, text: str, seconds: dict, key: str):
  """A console phase (`console.phase`) whose seconds are kept in `seconds[key]`."""
  t0 = time.perf_counter()
  try:
    with console.phase(say, text):
      yield
  finally:
    seconds[key] = time.perf_counter() - t0


def usable_memory(target: devices_lib.Target, environ=None) -> int:
  """Bytes of a chip's memory a run's buffers may take: all of a TPU's HBM (libtpu refuses more);
  on a GPU the fraction JAX's allocator takes (XLA_PYTHON_CLIENT_MEM_FRACTION, default 0.75)."""
  if not devices_lib.is_gpu(target):
    return target.chip.hbm_bytes
  environ = os.environ if environ is None else environ
  fraction = float(environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION") or gpu.DEFAULT_MEM_FRACTION)
  return int(fraction * target.chip.hbm_bytes)


def report(config: ml_collections.ConfigDict, target: devices_lib.Target, devices: list,
           trainer: Trainer, compiled: dict) -> dict:
  """Per chip: memory fit, FLOPs, collectives, roofline, host cores; everything a user needs to decide."""
  chip, per_device = target.chip, target.devices_per_chip  # figures per chip; JAX's devices per chip
  header = _header(config, target, devices)
  n, per_chip, hosts = header["chips"], header["batch_per_chip"], header["hosts"]
  train_mem, eval_mem = analysis.memory(compiled["train"]), analysis.memory(compiled["eval"])
  cost = analysis.costs(compiled["train"], compiled.get("train_lowered"), len(devices))
  comms = analysis.collectives(compiled["train"].as_text())
  # XLA's figures are per device (per TensorCore on v3): per chip, times the devices of a chip.
  xla_flops, step_bytes, comm_bytes = (per_device * x for x in _per_step(cost, comms))
  counted = 3 * 2 * flops_lib.count_macs(trainer.model, trainer.image_shape[0],
                                         trainer.image_shape[-1]) * per_chip
  roof = analysis.roofline(xla_flops, step_bytes, comm_bytes, chip, n,
                           peak_flops=chip.peak(config.dtype))
  needed = per_device * max(train_mem["needed"], eval_mem["needed"])
  usable = usable_memory(target)
  images_per_s = per_chip / roof.step_s
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(
      trainer.abstract_state().params))
  return {
      **header,
      "hbm": {"needed": needed, "chip": chip.hbm_bytes, "usable": usable, "fits": needed <= usable,
              "margin": usable - needed, "train": train_mem, "eval": eval_mem},
      "flops": {"xla_per_step": xla_flops, "counted_per_step": counted,
                "ratio": xla_flops / counted if counted else math.nan, "xla_source": cost["source"],
                "tolerance": FLOPS_TOLERANCE,
                "note": _flops_note(config, trainer.image_shape, xla_flops, counted)},
      "collectives": comms, "collective_bytes_per_step": comm_bytes, "param_bytes": param_bytes,
      "estimate": {"step_ms": 1e3 * roof.step_s, "compute_ms": 1e3 * roof.compute_s,
                   "hbm_ms": 1e3 * roof.memory_s, "interconnect_ms": 1e3 * roof.collective_s,
                   "bound": roof.bound, "images_per_sec_per_chip": images_per_s,
                   "peak_flops": chip.peak(config.dtype)},
      "host": _host(config, target, images_per_s, n // hosts),
      "compile_s": compiled["compile_s"], "phases_s": compiled.get("phases_s", {}),
      "chip_source": chip.source,
  }


def _header(config: ml_collections.ConfigDict, target: devices_lib.Target, devices: list) -> dict:
  """What was compiled, for where: the fields every report starts with. A GPU is a "chip" in the
  JSON's keys (batch_per_chip, ...), as a TPU chip is."""
  n = len(devices) // target.devices_per_chip  # chips
  where = ({"platform": "cuda", "machine": target.cloud_name, "cuda_topology": target.topology}
           if devices_lib.is_gpu(target) else {"platform": "tpu", "libtpu_topology": target.topology})
  return {"topology": target.name, **where, "chip": target.chip.name,
          "chips": n, "devices_per_chip": target.devices_per_chip,
          "hosts": derived.device_counts(config, devices)[1], "model": config.model,
          "dtype": config.dtype, "batch_size": config.batch_size,
          "batch_per_chip": config.batch_size // n, "steps_per_dispatch": config.steps_per_dispatch}


def _per_step(cost: dict, comms: dict) -> tuple[float, float, float]:
  """FLOPs, HBM bytes and collective bytes of one step, from the dispatch's figures.

  On TPU and GPU the K steps of a dispatch are a loop (`lax.scan`), and XLA's analyses count a
  loop's body once: its figures are already one step's. (On CPU the K steps are unrolled; see
  training.xla_cpu.scan.)
  """
  return cost["flops"], cost["bytes_accessed"], float(sum(c["bytes"] for c in comms.values()))


def _flops_note(config, image_shape, xla: float, counted: float) -> str:
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
  if ratio < 1 and image_shape[0] <= SMALL_IMAGE:
    reasons.append(f"{image_shape[0]}x{image_shape[1]} images: XLA counts only the kernel taps "
                   "that fall inside the image, the counted FLOPs every tap, and a 3x3 kernel on "
                   "a small feature map has many taps on its zero padding; nothing is wrong")
  return "; ".join(reasons) or ("outside the tolerance for a reason not identified: XLA counts BN, "
                                "ReLU and the optimizer, and the 3x rule approximates the backward")


# Images this small put many of a 3x3 kernel's taps on the padding of the last stages' feature maps.
SMALL_IMAGE = 16


def _host(config, target: devices_lib.Target, images_per_s_per_chip: float,
          chips_per_host: int) -> dict:
  """Host cores needed to decode and augment the images the chips consume, against the VM's."""
  vcpus = target.chip.vcpus_per_chip * chips_per_host
  if config.data_on_device or config.dataset in ("digits", "synthetic"):
    return {"input": "on the device / in memory: no decoding per step", "cores_needed": 0.0,
            "vcpus": vcpus}
  kind = "png" if derived.data_spec(config).fixed_size else "jpeg"
  needed = images_per_s_per_chip * chips_per_host / IMAGES_PER_CORE[kind]
  return {"input": f"{kind} decoded on the host at {IMAGES_PER_CORE[kind]:.0f} images/s per core "
                   f"({RATE_MEASURED_ON[kind]})",
          "cores_needed": needed, "vcpus": vcpus}


def compile_for(config: ml_collections.ConfigDict, topology: str,
                per_chip_batch: Optional[int] = None, say=None) -> dict:
  """Builds, compiles and reports the config's step on the slice or GPU machine `topology` (see
  module doc), naming each phase on `say`'s console."""
  say = say or (lambda text: None)
  target = devices_lib.find_target(topology)
  seconds = {}
  with _timed(say, f"describing {target.name}'s devices", seconds, "devices"):
    devices = devices_lib.devices_of(target)
  if per_chip_batch is not None:
    config = config.copy_and_resolve_references()
    config.batch_size = per_chip_batch * (len(devices) // target.devices_per_chip)
  with _timed(say, "building the trainer", seconds, "build"):
    trainer = build(config, devices)
  try:
    compiled = compile_step(trainer, say)
  except Exception as e:  # pylint: disable=broad-except
    if not out_of_hbm(str(e)):
      raise
    return not_fitting(config, target, devices, str(e))
  with _timed(say, "analysing the compiled programs", seconds, "analyse"):
    result = report(config, target, devices, trainer, compiled)
  analyse = seconds.pop("analyse")
  result["phases_s"] = {**seconds, **result["phases_s"], "analyse": analyse}
  return result


# libtpu refuses to compile a program whose buffers exceed the chip's HBM, instead of compiling it:
# "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries
# (16.46G) exceeds available HBM (15.75G)". That is the answer "does not fit", not a failure.
_OUT_OF_HBM = re.compile(r"\(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)")


def out_of_hbm(message: str) -> bool:
  return "RESOURCE_EXHAUSTED" in message and "HBM" in message


def not_fitting(config: ml_collections.ConfigDict, target: devices_lib.Target, devices: list,
                message: str) -> dict:
  """The report of a step the compiler refused for want of HBM: what it needed, per chip, if said."""
  found = _OUT_OF_HBM.search(message)
  # The compiler's figures are per device (per TensorCore on v3), in GiB.
  needed = target.devices_per_chip * float(found.group(1)) * 2**30 if found else math.nan
  line = next((l.strip() for l in message.splitlines() if "RESOURCE_EXHAUSTED" in l), message)
  usable = usable_memory(target)
  return {**_header(config, target, devices),
          "hbm": {"needed": needed, "chip": target.chip.hbm_bytes, "usable": usable, "fits": False,
                  "margin": usable - needed, "compiler": line},
          "chip_source": target.chip.source}
