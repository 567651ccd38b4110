"""What a compiled program says about itself: memory per device, FLOPs, bytes and collectives, and
the roofline estimate of its step time on a chip whose figures we know (`chips`).

Everything here reads XLA's own analyses of the compiled, optimised program (`memory_analysis`,
`cost_analysis`, the optimised HLO text); nothing runs. XLA's own time estimate
(`cost_analysis()["optimal_seconds"]`) came back negative for TPU programs compiled on a CPU host
(libtpu 0.0.42.1), so the time is a roofline from the chip's published peaks instead.

A program compiled for CUDA without a GPU has no `cost_analysis()` (None, jax 0.10.2): its FLOPs
come from XLA's cost analysis of the program before optimisation (`program_flops`; its convolutions
are still convolutions there, not cuDNN calls), and its memory traffic from the optimised HLO
(`kernel_bytes`: what each kernel reads and writes).
"""

import dataclasses
import re

import jax

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


def costs(compiled, lowered=None, devices: int = 1) -> dict:
  """XLA's FLOPs and bytes accessed per device for one call of the program.

  Where the compiler gives no cost analysis (CUDA without a GPU), from `lowered` (the same program
  before optimisation, over `devices` devices) and the optimised HLO instead; "source" says which.
  """
  c = compiled.cost_analysis()
  if isinstance(c, (list, tuple)):
    c = c[0] if c else None
  if c:
    return {"flops": float(c.get("flops", 0.0)), "bytes_accessed": float(c.get("bytes accessed", 0.0)),
            "source": "compiler"}
  if lowered is None:
    raise ValueError("the compiler gave no cost analysis, and no lowered program was passed")
  return {"flops": program_flops(lowered) / devices, "bytes_accessed": kernel_bytes(compiled.as_text()),
          "source": "unoptimised program and kernels"}


def program_flops(lowered) -> float:
  """XLA's FLOPs for the whole (unpartitioned) program of `lowered`, by its cost analysis on this
  host's CPU client: the program before optimisation, so convolutions and dots are counted as such."""
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top  # the one entry point there is

  module = lowered.compiler_ir("hlo").get_hlo_module()
  client = jax.devices("cpu")[0].client
  return float(_jax.hlo_module_cost_analysis(client, module).get("flops", 0.0))


# Instructions that move no memory themselves: views, tuples, the second half of async pairs, and the
# control flow whose bodies are counted instead.
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call",
         "conditional", "after-all", "partition-id", "replica-id", "iota", "opt-barrier"}
_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_BODY = re.compile(r"(?:body|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_LINE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$")


def kernel_bytes(hlo_text: str) -> float:
  """Bytes read and written per call by the kernels of an optimised HLO module: each top-level
  instruction (a fusion, a library call, a copy, a collective) reads its operands and writes its
  result once, as XLA's cost analysis counts a fusion. A loop's body counts once (one step, as the
  compiler's analysis counts it); fused computations are inside their kernels, not added."""
  shapes, entry, computations, current = {}, None, {}, None
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head:
      current = computations.setdefault(head.group(2), [])
      entry = head.group(2) if head.group(1) else entry
      continue
    m = _LINE.match(line)
    if not m or current is None:
      continue
    name, shape, op, rest = m.groups()
    shapes[name] = shape_bytes(shape)
    current.append((op, shape, rest))
  total, seen = 0.0, set()

  def walk(name):
    nonlocal total
    if name in seen or name not in computations:
      return
    seen.add(name)
    for op, shape, rest in computations[name]:
      if op in ("while", "call", "conditional"):
        for body in _BODY.findall(rest):
          walk(body)
        continue
      if op in _FREE or op.endswith("-done"):
        continue
      operands = rest.split(")", 1)[0]
      total += shape_bytes(shape) + sum(shapes.get(o, 0) for o in re.findall(r"%([\w.\-]+)", operands))

  walk(entry)
  return total


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO result shape (`f32[128,32,32,16]{3,2,1,0}`, or a tuple of them)."""
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
    entry["bytes"] += shape_bytes(shape)
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
             chips: int, peak_flops: float | None = None) -> Roofline:
  """The roofline of one step on one chip (all figures per chip; no collectives on one chip), at
  `peak_flops` (default: the chip's bf16 peak)."""
  return Roofline(compute_s=flops / (peak_flops or chip.peak_flops), memory_s=bytes_accessed / chip.hbm_bandwidth,
                  collective_s=collective_bytes / chip.allreduce_bandwidth if chips > 1 else 0.0)
