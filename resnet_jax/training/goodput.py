"""How close a run is to its hardware: achieved FLOP/s, share of the device's peak, time waiting for
input, and goodput (the share of wall time spent in training steps).

`Ledger` is pure bookkeeping: the loop hands it the seconds of each phase (compiling, evaluating,
checkpointing, drawing and transferring batches) and the wall time of each log interval, and it
returns the interval's `perf/*` keys and, at the end, the run's summary. The FLOPs of a step are
XLA's, from the compiled program's cost analysis (per device: a partitioned program's); the peak is
the device's published one (TPU chips from `targets.chips`, GPUs by kind from `targets.gpu`) or, on
a CPU, a float32 (or bfloat16) matmul timed once per process on this host.
"""

import contextlib
import dataclasses
import functools
import math
import time
import warnings
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from resnet_jax.targets import chips, gpu

# The phases that are not training steps; the wall time before the first compile is "restart".
PHASES = ("compile", "evaluate", "checkpoint", "input")
# TPU device kinds as JAX names them -> the chip table's names. v2 and v3 show one device per
# TensorCore (two per chip); later chips one device per chip (v4 and v5p: megacore).
_TPU_KINDS = (("v6 lite", "v6e", 1), ("v6e", "v6e", 1), ("v5 lite", "v5e", 1), ("v5e", "v5e", 1),
              ("v5p", "v5p", 1), ("v5", "v5p", 1), ("v4", "v4", 1), ("v3", "v3", 2))
# GPU device kinds -> the GPU table (an A100's kind names its memory: "NVIDIA A100-SXM4-80GB").
_GPU_KINDS = (("h200", "h200"), ("h100", "h100"), ("a100", "a100-40gb"), ("l4", "l4"))
MATMUL_SIZE = 1024  # 2 x 1024^3 FLOPs a call: ~10-30 ms on two cores, so the probe costs < 0.5 s


def peak_flops(device, dtype: str) -> tuple[float, str]:
  """(peak FLOP/s of one `device` for convolutions in `dtype`, where the figure comes from); NaN
  for a kind we have no figure for."""
  kind = device.device_kind.lower()
  if device.platform == "tpu":
    for key, name, cores in _TPU_KINDS:
      if key in kind:
        return chips.CHIPS[name].peak(dtype) / cores, f"{chips.CHIPS[name].name} (published)"
  elif device.platform in ("gpu", "cuda", "rocm"):
    for key, name in _GPU_KINDS:
      if key in kind:
        if name == "a100-40gb" and "80gb" in kind:
          name = "a100-80gb"
        g = gpu.GPUS[name]
        return (g.peak_tf32 if dtype == "float32" else g.peak_bf16), f"{g.name} (published)"
  elif device.platform == "cpu":
    devices = max(1, jax.local_device_count("cpu"))  # simulated CPU devices share the host
    return cpu_matmul_peak(dtype) / devices, f"this host's {dtype} matmul (measured)"
  return math.nan, f"no figure for {device.device_kind}"


@functools.lru_cache(maxsize=None)
def cpu_matmul_peak(dtype: str = "float32") -> float:
  """FLOP/s of a square matmul on this host's first CPU device: the best of five timed calls."""
  n = MATMUL_SIZE
  cpu = jax.devices("cpu")[0]
  a = jax.device_put(jnp.ones((n, n), dtype), cpu)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()  # compile
  best = math.inf
  for _ in range(5):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def step_flops(fn, state, args: tuple, steps: int) -> float:
  """XLA's FLOPs per device of one step of the jitted `fn(state, *args)`, a dispatch of `steps` steps.

  The compiled, partitioned program's count, from jit's cache (the loop has just run it: nothing new
  is compiled); NaN where the compiler gives no cost analysis."""
  shapes = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), state)
  try:
    cost = fn.lower(shapes, *args).compile().cost_analysis()
  except Exception as e:  # pylint: disable=broad-except
    # A rate on the log line must never end a run: pmap over several processes, for one, cannot
    # re-lower from shapes (its host-local to global conversion fails inside JAX). The run goes on
    # with TFLOP/s and the peak share left out (NaN), and says why once.
    warnings.warn(f"TFLOP/s and share of peak are not reported: the compiled step's FLOPs could not "
                  f"be read ({type(e).__name__}: {e})")
    return math.nan
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost.get("flops", math.nan)) / steps if cost else math.nan


@dataclasses.dataclass
class Ledger:
  """Seconds by phase since the run's process began its work, and the flops/peak to rate steps."""
  clock: Callable[[], float] = time.perf_counter
  flops_per_step: float = math.nan  # per device
  peak: float = math.nan            # FLOP/s per device

  def __post_init__(self):
    self.start = self.clock()
    self.first_compile: Optional[float] = None
    self.total = dict.fromkeys(PHASES, 0.0)
    self.interval = dict.fromkeys(PHASES, 0.0)
    self.training = 0.0
    self.uncounted_steps = 0  # steps run inside a compile, so timed as compiling

  def add(self, phase: str, seconds: float) -> None:
    self.total[phase] += seconds
    self.interval[phase] += seconds

  @contextlib.contextmanager
  def timing(self, phase: str):
    if phase == "compile" and self.first_compile is None:
      self.first_compile = self.clock()
    t = self.clock()
    try:
      yield
    finally:
      self.add(phase, self.clock() - t)

  def rate(self, seconds: float, steps: int) -> dict:
    """The `perf/*` keys of a log interval of `seconds` wall time and `steps` steps; starts the next.

    Step time excludes the compiling, evaluating and checkpointing done in the interval (and the
    steps run while compiling) but includes waiting for input, whose share it reports."""
    stepping = seconds - sum(self.interval[p] for p in ("compile", "evaluate", "checkpoint"))
    steps -= self.uncounted_steps
    waiting = self.interval["input"]
    self.training += max(0.0, stepping - waiting)
    self.interval, self.uncounted_steps = dict.fromkeys(PHASES, 0.0), 0
    if steps <= 0 or stepping <= 0:
      return {}
    step_s = stepping / steps
    out = {"perf/step_s": step_s, "perf/input_wait_share": min(1.0, waiting / stepping)}
    if math.isfinite(self.flops_per_step):
      out["perf/tflops_per_device"] = self.flops_per_step / step_s / 1e12
      if math.isfinite(self.peak) and self.peak > 0:
        out["perf/peak_share"] = self.flops_per_step / step_s / self.peak
    return out

  def summary(self) -> dict:
    """Wall seconds by phase and goodput: the share of the wall time spent in training steps."""
    wall = self.clock() - self.start
    restart = (self.first_compile if self.first_compile is not None else self.clock()) - self.start
    out = {"wall_s": wall, "training_s": self.training, "restart_s": restart,
           **{f"{p}_s": self.total[p] for p in PHASES}}
    out["other_s"] = max(0.0, wall - sum(v for k, v in out.items() if k != "wall_s"))
    out["goodput"] = self.training / wall if wall > 0 else math.nan
    return out


def describe(summary: dict) -> str:
  """One line for the console: goodput and where the rest of the wall time went."""
  parts = [f"{name} {summary[f'{name}_s']:.1f} s" for name in
           ("training", "restart") + PHASES + ("other",)]
  return (f"goodput {100 * summary['goodput']:.1f}% of {summary['wall_s']:.1f} s wall time "
          f"({', '.join(parts)})")
