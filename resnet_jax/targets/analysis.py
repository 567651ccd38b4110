"""What a compiled program says about itself: memory per device, FLOPs, bytes and collectives, and
the roofline estimate of its step time on a chip whose figures we know (`chips`).

Everything here reads XLA's own analyses of the compiled, optimised program (`memory_analysis`,
`cost_analysis`, the optimised HLO text); nothing runs. XLA's own time estimate
(`cost_analysis()["optimal_seconds"]`) came back negative for TPU programs compiled on a CPU host
(libtpu 0.0.42.1), so the time is a roofline from the chip's published peaks instead.
"""

import dataclasses
import re

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
# An HLO instruction: `%name = <result shape> <op>(` ; the shape may be a tuple with spaces.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (.+?) (" + "|".join(COLLECTIVES)
                          + r")(?:-start)?\(", re.M)
_ARRAY = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")


def memory(compiled) -> dict:
  """Bytes per device: arguments, outputs, temporaries, donated (aliased) buffers, code, and what
  the program needs at its peak (arguments + outputs + temporaries + code - donated)."""
  m = compiled.memory_analysis()
  if isinstance(m, (list, tuple)):
    m = m[0]
  get = lambda name: int(getattr(m, f"{name}_size_in_bytes", 0) or 0)
  out = {"arguments": get("argument"), "outputs": get("output"), "temporaries": get("temp"),
         "donated": get("alias"), "code": get("generated_code")}
  out["needed"] = (out["arguments"] + out["outputs"] + out["temporaries"] + out["code"]
                   - out["donated"])
  return out


def costs(compiled) -> dict:
  """XLA's FLOPs and bytes accessed per device for one call of the program."""
  c = compiled.cost_analysis()
  if isinstance(c, (list, tuple)):
    c = c[0]
  return {"flops": float(c.get("flops", 0.0)), "bytes_accessed": float(c.get("bytes accessed", 0.0))}


def _shape_bytes(shape: str) -> int:
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    n = 1
    for d in (int(x) for x in dims.split(",") if x):
      n *= d
    total += n * DTYPE_BYTES[dtype]
  return total


def collectives(hlo_text: str) -> dict[str, dict]:
  """{kind: {"count", "bytes"}} of the collectives in optimised HLO text (bytes: their results)."""
  out = {}
  for shape, kind in _INSTRUCTION.findall(hlo_text):
    entry = out.setdefault(kind, {"count": 0, "bytes": 0})
    entry["count"] += 1
    entry["bytes"] += _shape_bytes(shape)
  return out


@dataclasses.dataclass(frozen=True)
class Roofline:
  """Step time bounds from FLOPs, HBM bytes and collective bytes against a chip's peaks: an estimate."""
  compute_s: float
  memory_s: float
  collective_s: float

  @property
  def step_s(self) -> float:
    # Perfect overlap: the slowest of the three bounds the step (XLA on TPU overlaps the gradient
    # all-reduce with the backward pass; HBM traffic and MXU work proceed together).
    return max(self.compute_s, self.memory_s, self.collective_s)

  @property
  def bound(self) -> str:
    return max((self.compute_s, "compute"), (self.memory_s, "HBM bandwidth"),
               (self.collective_s, "interconnect"))[1]


def roofline(flops: float, bytes_accessed: float, collective_bytes: float, chip,
             chips: int) -> Roofline:
  """The roofline of one step on one chip (all figures per chip; no collectives on one chip)."""
  return Roofline(compute_s=flops / chip.peak_flops, memory_s=bytes_accessed / chip.hbm_bandwidth,
                  collective_s=collective_bytes / chip.allreduce_bandwidth if chips > 1 else 0.0)
