"""`resnet-jax compile --max-batch`: the largest per-chip batch whose step fits a target's memory,
found by compiling the step for it (`compile.compile_for`) at batches chosen by doubling, then
bisection."""

import math

import ml_collections

from resnet_jax.targets import compile as compile_lib
from resnet_jax.targets import devices

MAX_PER_CHIP_BATCH = 1 << 16  # --max-batch stops doubling here
# --max-batch tries per-chip batches in multiples of this: a TPU vreg's sublane tile is 8 rows (a
# batch of 8k fills whole tiles), and GPU kernels favour batches in multiples of 8 too.
BATCH_GRANULE = 8


def max_batch(config: ml_collections.ConfigDict, topology: str, say=print) -> tuple[int, dict]:
  """The largest per-chip batch whose step fits the chip's memory: doubling, then bisection over
  compiles, in multiples of BATCH_GRANULE that keep the global batch a multiple of
  `bn_group_size`. Returns (batch per chip, its report)."""
  target = devices.find_target(topology)
  n = len(devices.devices_of(target)) // target.devices_per_chip  # chips (a v3 chip is two devices)
  group = config.bn_group_size  # under jit BN groups split the global batch: n x per-chip batch
  step = math.lcm(BATCH_GRANULE, group // math.gcd(group, n)) if group else BATCH_GRANULE
  fits = {}

  def fit(b: int) -> bool:
    if b not in fits:
      r = compile_lib.compile_for(config, topology, b, say=say)
      fits[b] = r
      say(f"batch {b} per chip: {r['hbm']['needed'] / 2**30:.2f} GiB of "
          f"{r['hbm']['usable'] / 2**30:.0f} GiB, {'fits' if r['hbm']['fits'] else 'does not fit'}")
    return fits[b]["hbm"]["fits"]

  down = lambda b: b // step * step
  start = max(step, down(config.batch_size // n))
  if fit(start):  # double until one does not fit
    low, high = start, None
    while high is None:
      if 2 * low > MAX_PER_CHIP_BATCH:
        return low, fits[low]
      low, high = (2 * low, None) if fit(2 * low) else (low, 2 * low)
  else:  # halve until one fits
    low, high = None, start
    while low is None:
      if down(high // 2) < step:
        return 0, fits[high]
      half = down(high // 2)
      low, high = (half, high) if fit(half) else (None, half)
  while high - low > step:  # bisect, in multiples of the step
    mid = down((low + high) // 2)
    low, high = (mid, high) if fit(mid) else (low, mid)
  return low, fits[low]
