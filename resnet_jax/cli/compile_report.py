"""What `resnet-jax compile` prints for people (its JSON line, for scripts, has every figure): where
the step was compiled for, and the report's memory, FLOPs, collectives, estimate and host input."""

import math


def describe_where(target) -> str:
  """`8 x NVIDIA H100 80GB HBM3 on 1 host`: the chips of a slice or GPU machine, in words."""
  hosts = getattr(target, "hosts", None)
  if hosts is None:  # a TPU slice: its chips, from libtpu's topology (v5e:2x4 is 8 chips)
    n = math.prod(int(d) for d in target.topology.split(":")[1].split("x"))
    return f"{n} x {target.chip.name}"
  return f"{hosts * target.machine.gpus} x {target.gpu.name} on {hosts} host{'s' * (hosts > 1)}"


def _ms(seconds_ms: float) -> str:
  """A time in ms with the digits that matter: 60.66 ms, 0.042 ms, 3.1 us."""
  if seconds_ms >= 0.1:
    return f"{seconds_ms:.2f} ms"
  if seconds_ms >= 0.01:
    return f"{seconds_ms:.3f} ms"
  return f"{1e3 * seconds_ms:.1f} us"


def describe_compile(r: dict) -> str:
  """The human-readable report of `resnet-jax compile` (its JSON has every figure)."""
  gib, hbm = 2**30, r["hbm"]
  gpu = r.get("platform") == "cuda"
  unit, memory = ("GPU", "memory") if gpu else ("chip", "HBM")
  where = (f"{r['machine']}, CUDA topology {r['cuda_topology']}" if gpu else r["libtpu_topology"])
  head = (f"{r['model']} ({r['dtype']}) on {r['topology']} ({where}): {r['chips']} x "
          f"{r['chip']} on {r['hosts']} host(s), batch {r['batch_size']} ({r['batch_per_chip']} per "
          f"{unit})")
  of = f"{hbm['chip'] / gib:.0f} GiB"
  if gpu:  # JAX's allocator takes a fraction of the GPU's memory, not all of it
    of = (f"{hbm['usable'] / gib:.1f} GiB usable ({hbm['usable'] / hbm['chip']:.0%} of the "
          f"datasheet's {hbm['chip'] / 1e9:.0f} GB; XLA_PYTHON_CLIENT_MEM_FRACTION sets the share)")
  if "flops" not in r:  # the compiler refused it for want of HBM: nothing else to report
    return "\n".join([head, f"  {memory} per {unit}: does NOT fit, {hbm['needed'] / gib:.2f} GiB "
                             f"needed of {of} (the compiler: {hbm['compiler']})"])
  f, e, h = r["flops"], r["estimate"], r["host"]
  per_chip = r["devices_per_chip"]  # memory analyses are per device
  comms = ", ".join(f"{k} x{v['count']} {v['bytes'] / 1e6:.2f} MB" for k, v in r["collectives"].items())
  verdict = (f"fits, {hbm['margin'] / gib:.2f} GiB to spare" if hbm["fits"]
             else f"does NOT fit, {-hbm['margin'] / gib:.2f} GiB short")
  xla = ("XLA (before optimisation: no cost analysis for CUDA here)"
         if f.get("xla_source", "compiler") != "compiler" else "XLA")
  bounds = [f"compute {_ms(e['compute_ms'])} at {e['peak_flops'] / 1e12:.0f} TFLOP/s",
            f"{memory} {_ms(e['hbm_ms'])}"]
  if r["chips"] > 1:
    bounds.append(f"interconnect {_ms(e['interconnect_ms'])}")
  vm = "its VM" if gpu else "its TPU VM"
  phases = r.get("phases_s", {})
  lines = [
      head,
      f"  {memory} per {unit}: {hbm['needed'] / gib:.2f} GiB needed of {of}: {verdict} "
      f"(train step {per_chip * hbm['train']['needed'] / gib:.2f} GiB, eval step "
      f"{per_chip * hbm['eval']['needed'] / gib:.2f})",
      f"  FLOPs per step per {unit}: {xla} {f['xla_per_step']:.3g}, counted {f['counted_per_step']:.3g} "
      f"(ratio {f['ratio']:.2f}: {f['note']})",
      f"  collectives per step: {comms or 'none'} (parameters: {r['param_bytes'] / 1e6:.2f} MB)",
      f"  ESTIMATE (a roofline from published peaks, not a measurement): {_ms(e['step_ms'])} per "
      f"step, {e['images_per_sec_per_chip']:,.0f} images/s per {unit}, bound by {e['bound']} "
      f"({', '.join(bounds)})",
      f"  host input: {h['input']}; {h['cores_needed']:.0f} cores per host needed, {vm} has "
      f"{h['vcpus']:.0f} vCPUs",
      f"  compiled in {r['compile_s']['train']:.1f} s (train) + {r['compile_s']['eval']:.1f} s (eval)"
      + (f"; every phase: {', '.join(f'{k} {v:.1f} s' for k, v in phases.items())}" if phases else "")]
  if gpu:
    lines.append("  not known without a GPU: the kernels XLA's autotuner would pick (here its "
                 "defaults), the cuDNN workspace they take, and the real step time")
  return "\n".join(lines)
