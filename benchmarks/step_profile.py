"""Where our compiled train step's time goes on this CPU: a jax.profiler trace, split by kind of op.

  python benchmarks/step_profile.py --model resnet20 --batch-size 128 --steps 3 --torch

Compiles the exact step `resnet-jax bench` times (resnet_jax.bench.step.prepare), runs it twice to
warm up, then traces `--steps` steps with jax.profiler. Each XLA op the CPU runtime executes is an
event of the trace named after its HLO instruction; each is put in one category by reading that
instruction in the compiled HLO text (`compile().as_text()`):

  conv forward / backward-input / backward-weight   a convolution, or a fusion holding one: the
      weight gradient is the convolution whose output is the kernel (its output's spatial size is
      smaller than its window, which is the activation); backward-input is a convolution of the
      backward pass (op_name under transpose(...), or lhs_dilate) that is not one; the rest forward.
  copies / transposes    copy, transpose, pad, slice, broadcast and fusions of nothing else
  optimizer update       ops of the step outside the model and the loss (optax's update, the norms)
  batch norm / reductions   other fusions or ops holding a reduce
  elementwise            the other fusions
  other                  the rest (the head's matmul, ...)
  idle / runtime         pool-thread time with no op and no convolution in flight

XLA:CPU's convolutions hand their work to the thread pool and return, so their events are short and
the work shows as gaps between events: each gap is given to the convolutions in flight then (see
`attribute`). The categories share the pool threads' whole span of each step (thread-ms); a
category's share times the step's wall time is its part of the step. Prints a markdown table under
the CPU model (`lscpu`) and the date; `--out PATH` writes it. `--torch` also profiles the PyTorch
step of benchmarks/minimal_torch.py (torch.profiler; `--torch-threads N`) and puts its convolution
time (aten::convolution + convolution_backward, which computes both gradients) beside ours.
"""

import argparse
import collections
import datetime
import glob
import gzip
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout, when run as a script

CATEGORIES = ("conv forward", "conv backward-input", "conv backward-weight",
              "batch norm / reductions", "elementwise", "copies / transposes",
              "optimizer update", "other", "idle / runtime")
CONV_CATEGORIES = CATEGORIES[:3]
IDLE = CATEGORIES[-1]
ASYNC_CATEGORIES = CONV_CATEGORIES + ("other",)  # Eigen convolutions and matmuls (the head's dot)
TOP_OPS = 10  # the largest ops, and the largest outside the convolutions, listed under the table
_MOVEMENT = {"copy", "transpose", "bitcast", "reshape", "slice", "pad", "concatenate", "broadcast",
             "dynamic-slice", "dynamic-update-slice", "parameter", "constant", "tuple",
             "get-tuple-element", "iota", "reverse"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+) .*\{\s*$")
# An op of the step itself, not scoped under the model's jvp/transpose or the loss: the optimizer.
_STEP_LEVEL = re.compile(r'op_name="jit\([^)]*\)/[\w\-]+"')


# A copy this large moves a whole activation (ResNet-20 at batch 128: 2-8 MiB), not a kernel.
LARGE_COPY_BYTES = 1 << 20


def parse_hlo(text: str) -> tuple[dict, dict]:
  """({instruction name: (opcode, shape, rest of line)}, {computation: [instruction names]})."""
  instructions, computations, current = {}, {}, None
  for line in text.splitlines():
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      name, shape, opcode, rest = m.groups()
      instructions[name] = (opcode, shape, rest)
      computations[current].append(name)
      continue
    m = _COMPUTATION.match(line)
    if m:
      current = m.group(1)
      computations[current] = []
  return instructions, computations


def _called(rest: str) -> list[str]:
  return re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", rest)


def _contents(name: str, instructions: dict, computations: dict) -> list[str]:
  """Names of the instructions inside fusion `name`'s computations (nested ones too)."""
  out, todo, seen = [], _called(instructions[name][2]), set()
  while todo:
    comp = todo.pop()
    if comp in seen or comp not in computations:
      continue
    seen.add(comp)
    for inner in computations[comp]:
      out.append(inner)
      todo.extend(_called(instructions[inner][2]))
  return out


def _dims(shape: str) -> list[int]:
  m = re.search(r"\[([\d,]*)\]", shape)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def conv_kind(shape: str, rest: str) -> str:
  """Which of the three convolutions of training this HLO convolution is."""
  window = re.search(r"size=([\dx]+)", rest)
  labels = re.search(r"dim_labels=\w+_\w+->(\w+)", rest)
  if window and labels:
    window_size = math.prod(int(d) for d in window.group(1).split("x"))
    dims = _dims(shape)
    out_spatial = math.prod(d for d, label in zip(dims, labels.group(1)) if label.isdigit())
    if out_spatial < window_size:  # the "window" is the activation, the output the kernel
      return "conv backward-weight"
  if "lhs_dilate" in rest or "transpose(" in rest:
    return "conv backward-input"
  return "conv forward"


def categorize(name: str, instructions: dict, computations: dict) -> str:
  if name not in instructions:
    return "other"
  opcode, shape, rest = instructions[name]
  if opcode == "convolution":
    return conv_kind(shape, rest)
  inner = _contents(name, instructions, computations) if opcode == "fusion" else []
  for i in inner:
    if instructions[i][0] == "convolution":
      return conv_kind(instructions[i][1], instructions[i][2])
  opcodes = {instructions[i][0] for i in inner} or {opcode}
  if opcodes <= _MOVEMENT:
    return "copies / transposes"
  if _STEP_LEVEL.search(rest):
    return "optimizer update"
  if opcodes & {"reduce", "reduce-window"}:
    return "batch norm / reductions"
  if opcode == "fusion" or opcodes & {"add", "multiply", "subtract", "divide", "maximum", "select",
                                      "rsqrt", "sqrt", "exponential", "log", "compare", "negate"}:
    return "elementwise"
  return "other"


def layout_copies(instructions: dict, computations: dict, entry: str,
                  min_bytes: int = LARGE_COPY_BYTES) -> list[tuple[str, str]]:
  """(name, shape) of the step's copies and transposes that move at least `min_bytes`.

  Small ones (kernels, per-channel vectors) cost nothing; the large ones are whole activations moved
  between layouts, e.g. for the weight-gradient convolutions: each is one more pass over memory.
  """
  from resnet_jax.targets import analysis  # pylint: disable=g-import-not-at-top
  out = []
  for name in computations[entry]:
    opcode, shape, _ = instructions[name]
    inner = {instructions[i][0] for i in _contents(name, instructions, computations)}
    if (not ({opcode} | inner) & {"copy", "transpose"}
        or categorize(name, instructions, computations) != "copies / transposes"):
      continue  # bitcasts and reshapes are free; broadcasts and pads are not layout changes
    if analysis.shape_bytes(shape) >= min_bytes:
      out.append((name, shape))
  return out


def op_events(trace_dir: str, module: str) -> list[dict]:
  """The XLA op events ("X" events naming an HLO instruction of `module`) of the trace in `trace_dir`."""
  paths = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz"))
  if not paths:
    raise RuntimeError(f"the profiler wrote no *.trace.json.gz under {trace_dir}")
  with gzip.open(sorted(paths)[-1]) as f:
    events = json.load(f)["traceEvents"]
  ops = [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})
         and e["args"].get("hlo_module") == module]
  # XLA:CPU's intra-op pool runs the step; the client thread that starts it only waits after its
  # first ops, so its gaps are not work: keep the pool's threads where the trace names them.
  pool = {e.get("tid") for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
          and "XLAEigen" in e.get("args", {}).get("name", "")}
  in_pool = [e for e in ops if e["tid"] in pool]
  return in_pool if in_pool else ops


def consumers_of(instructions: dict, computations: dict, entry: str) -> dict:
  """{entry instruction: the entry instructions that read it}."""
  out = collections.defaultdict(set)
  for name in computations[entry]:
    operands = instructions[name][2].split("), ", 1)[0]
    for operand in re.findall(r"%([\w.\-]+)", operands):
      out[operand].add(name)
  return out


def attribute(events: list[dict], category, consumers: dict) -> collections.Counter:
  """µs per HLO instruction (and IDLE) over the runtime threads' whole time in each traced step.

  An op's event covers its own time, except for XLA:CPU's Eigen convolutions and matmuls: their
  event ends once the work is handed to the thread pool, whose tasks (on the same threads) the
  profiler does not mark. So a gap between events on a thread is put on the asynchronous ops in
  flight then (from their event's end to the first start of an op reading their result), shared
  evenly; a gap with none in flight is "idle / runtime" (scheduling, waiting, other processes).
  """
  total = collections.Counter()
  for run in {e["args"].get("run_id") for e in events}:
    evs = sorted((e for e in events if e["args"].get("run_id") == run), key=lambda e: e["ts"])
    t0, t1 = evs[0]["ts"], max(e["ts"] + e["dur"] for e in evs)
    start, end = {}, {}
    for e in evs:
      name = e["args"]["hlo_op"]
      start.setdefault(name, e["ts"])
      end[name] = max(end.get(name, 0), e["ts"] + e["dur"])
      total[name] += e["dur"]
    in_flight = []
    for name in end:
      if category(name) in ASYNC_CATEGORIES:
        done = _first_read(name, consumers, start, t1)
        if done > end[name]:
          in_flight.append((end[name], done, name))
    for tid in {e["tid"] for e in evs}:
      mine = [e for e in evs if e["tid"] == tid]
      edges = [t0] + [x for e in mine for x in (e["ts"], e["ts"] + e["dur"])] + [t1]
      for g0, g1 in zip(edges[::2], edges[1::2]):
        if g1 > g0:
          _share_gap(g0, g1, in_flight, total)
  return total


def _first_read(name: str, consumers: dict, start: dict, t1: float) -> float:
  """When the first executed op reading `name`'s result started: through ops that run no thunk
  (bitcasts, tuples), whose readers read it in turn; the step's end if none."""
  first, todo, seen = t1, list(consumers.get(name, ())), set()
  while todo:
    c = todo.pop()
    if c in seen:
      continue
    seen.add(c)
    if c in start:
      first = min(first, start[c])
    else:
      todo.extend(consumers.get(c, ()))
  return first


def _share_gap(g0: float, g1: float, in_flight: list, total: collections.Counter) -> None:
  cuts = sorted({g0, g1} | {t for a, b, _ in in_flight for t in (a, b) if g0 < t < g1})
  for a, b in zip(cuts, cuts[1:]):
    live = [c for s, d, c in in_flight if s <= a and d >= b]
    for c in live:
      total[c] += (b - a) / len(live)
    if not live:
      total[IDLE] += b - a


def profile_ours(model: str, batch_size: int, dtype: str, cpu_fusion, steps: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from resnet_jax.bench import step as bench_step  # pylint: disable=g-import-not-at-top

  _, state, fn, args = bench_step.prepare(model=model, batch_size=batch_size, dtype=dtype,
                                          total_steps=steps + 2, cpu_fusion=cpu_fusion,
                                          num_devices=1)  # a CPU host's one device (not XLA_FLAGS'
                                                          # forced host devices, sharing its cores)
  lowered = fn.lower(state, *args)
  compiled = lowered.compile()
  hlo = compiled.as_text()
  instructions, computations = parse_hlo(hlo)
  module = hlo.split(None, 2)[1].rstrip(",")  # "HloModule jit_train_step, ...": the trace's name
  for _ in range(2):
    state, metrics = compiled(state, *args)
  jax.block_until_ready(state)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    walls, state, _ = bench_step.time_calls(compiled, state, args, steps)
    jax.profiler.stop_trace()
    events = op_events(trace_dir, module)
  entry = re.search(r"^ENTRY %([\w.\-]+)", hlo, re.M).group(1)
  kinds = {name: categorize(name, instructions, computations)
           for name in {e["args"]["hlo_op"] for e in events}}
  per_op = attribute(events, kinds.__getitem__, consumers_of(instructions, computations, entry))
  kinds[IDLE] = IDLE
  totals = collections.Counter()
  for name, us in per_op.items():
    totals[kinds[name]] += us
  ms = {c: totals[c] / 1e3 / steps for c in CATEGORIES}
  ranked = [{"op": name, "category": kinds[name], "ms": us / 1e3 / steps,
             "source": _source(name, instructions, computations)}
            for name, us in per_op.most_common() if name != IDLE]
  top = ranked[:TOP_OPS] + [op for op in ranked if op["category"] not in CONV_CATEGORIES][:TOP_OPS]
  threads = len({e["tid"] for e in events})
  traced_us = 0.0  # each step's span on each runtime thread: what the categories share
  for run in {e["args"].get("run_id") for e in events}:
    evs = [e for e in events if e["args"].get("run_id") == run]
    span = max(e["ts"] + e["dur"] for e in evs) - min(e["ts"] for e in evs)
    traced_us += span * len({e["tid"] for e in evs})
  copies = layout_copies(instructions, computations, entry)
  from resnet_jax.targets import analysis  # pylint: disable=g-import-not-at-top
  copy_mib = sum(analysis.shape_bytes(shape) for _, shape in copies) / 2**20
  return {"ms": ms, "total_ms": sum(ms.values()), "large_copies": len(copies),
          "large_copies_mib": copy_mib, "wall_ms": 1e3 * min(walls),
          "wall_ms_all": [1e3 * w for w in walls], "threads": threads,
          "traced_ms": traced_us / 1e3 / steps,
          "events_ms": sum(e["dur"] for e in events) / 1e3 / steps, "ops": len(kinds) - 1,
          "module": module, "top": top}


def _source(name: str, instructions: dict, computations: dict) -> str:
  """The op_name metadata of `name` (or of the first instruction inside it that has one)."""
  if name not in instructions:
    return ""
  for n in [name] + _contents(name, instructions, computations):
    m = re.search(r'op_name="([^"]*)"', instructions[n][2])
    if m:
      return m.group(1)
  return ""


def profile_torch(depth: int, batch_size: int, dtype: str, steps: int,
                  threads: int | None = None) -> dict:
  """PyTorch's step: wall ms per step and its convolutions' ms (forward and backward ops)."""
  import torch  # pylint: disable=g-import-not-at-top
  if threads:
    torch.set_num_threads(threads)
  sys.path.insert(0, HERE)
  import minimal_torch  # pylint: disable=g-import-not-at-top

  step = minimal_torch.make_step(depth, batch_size, dtype=dtype)
  step(), step()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    t = time.perf_counter()
    for _ in range(steps):
      step()
    wall = time.perf_counter() - t
  conv = sum(e.cpu_time_total for e in prof.key_averages()
             if e.key in ("aten::convolution", "aten::convolution_backward"))
  return {"wall_ms": 1e3 * wall / steps, "conv_ms": conv / 1e3 / steps, "torch": torch.__version__,
          "threads": torch.get_num_threads()}


def cpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    out = ""
  names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
  return names[0] if names else (platform.processor() or "unknown CPU")


def table(result: dict, args) -> str:
  ours = result["ours"]
  total, wall = ours["total_ms"], ours["wall_ms"]
  step_ms = {c: wall * ours["ms"][c] / total for c in CATEGORIES}  # its share of a step's wall time
  lines = [f"{cpu_model()}, {os.cpu_count()} cores, {datetime.date.today().isoformat()}: "
           f"{args.model}, batch {args.batch_size}, {args.dtype}, cpu_fusion "
           f"{args.cpu_fusion or 'default'}; {args.steps} traced steps, wall {wall:.1f} ms/step, "
           f"{ours['threads']} runtime threads ({total:.1f} thread-ms/step)", "",
           "| category | thread-ms/step | share | share x wall ms |", "|---|---|---|---|"]
  for c in CATEGORIES:
    lines.append(f"| {c} | {ours['ms'][c]:.1f} | {100 * ours['ms'][c] / total:.1f}% "
                 f"| {step_ms[c]:.1f} |")
  lines.append(f"| **total** | {total:.1f} | 100% | {wall:.1f} |")
  lines += ["", f"The compiled step holds {ours['large_copies']} copies or transposes of at least "
            f"{LARGE_COPY_BYTES >> 20} MiB ({ours['large_copies_mib']:.0f} MiB written a step)."]
  lines += ["", "| largest ops, then the largest outside the convolutions | category | "
            "thread-ms/step | op_name |", "|---|---|---|---|"]
  for op in ours["top"]:
    lines.append(f"| {op['op']} | {op['category']} | {op['ms']:.1f} | {op['source'][:90]} |")
  if "torch" in result:
    t = result["torch"]
    lines += ["", "| wall ms/step (PyTorch's ops run one at a time, each on all threads) | ms |",
              "|---|---|",
              f"| ours: conv backward-weight | {step_ms['conv backward-weight']:.1f} |",
              f"| ours: all conv | {sum(step_ms[c] for c in CONV_CATEGORIES):.1f} |",
              f"| PyTorch {t['torch']} ({t['threads']} threads): all conv (aten::convolution + "
              "convolution_backward) "
              f"| {t['conv_ms']:.1f} |",
              f"| ours: step | {wall:.1f} |",
              f"| PyTorch: step (profiled) | {t['wall_ms']:.1f} |",
              f"| PyTorch: conv share of its step | {100 * t['conv_ms'] / t['wall_ms']:.1f}% |"]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--cpu-fusion", default=None, help="our step's cpu_fusion (default: config's)")
  parser.add_argument("--steps", type=int, default=3, help="traced steps (after 2 warm-up steps)")
  parser.add_argument("--torch", action="store_true", help="also profile the PyTorch step")
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="torch.set_num_threads for --torch (default: torch's own)")
  parser.add_argument("--out", default=None, help="also write the markdown table here")
  args = parser.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  result = {"ours": profile_ours(args.model, args.batch_size, args.dtype, args.cpu_fusion,
                                 args.steps)}
  if args.torch:
    depth = int(re.sub(r"\D", "", args.model))
    result["torch"] = profile_torch(depth, args.batch_size, args.dtype, args.steps,
                                    args.torch_threads)
  text = table(result, args)
  print(text)
  print(json.dumps(result))
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
