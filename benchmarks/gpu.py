"""GPU figures in one prepared run (under 8 minutes on one H100): ResNet-50 and ResNet-56 throughput.

  python benchmarks/gpu.py            # on a CUDA machine (benchmarks/gpu.sh sets it up)
  python benchmarks/gpu.py --smoke    # tiny sizes, any machine: checks the script end to end
  python benchmarks/gpu.py --check h100-1   # before renting: compile every case for that GPU here

`--check TOPOLOGY` compiles each case's exact step for the named GPU machine on this host
(`resnet-jax compile`, the `gpu` extra; no GPU needed) and exits 1 if any does not fit, so the paid
run does not find out on the machine.

Each case runs `resnet-jax bench` in its own process (fresh device memory), then this prints a
markdown table and one JSON line: images/s, achieved TFLOP/s and the fraction of the card's dense
bf16 peak for ResNet-50 bf16 at batch 256; steps/s and the implied time of the paper's 64k-step
CIFAR schedule for ResNet-56 at batch 128, with and without on-device data and K steps per dispatch;
then `benchmarks/vectorized.py`: 8 sweep members of ResNet-20 and ResNet-56 in one vmapped step vs
one after another (member-steps/s, memory).
"""

import argparse
import json
import os
import subprocess
import sys

# Dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets, no sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 125.0}
PAPER_CIFAR_STEPS = 64_000  # He et al. 2015, sec. 4.2


def cases(smoke: bool) -> list[list[str]]:
  if smoke:
    r50 = ["--model", "resnet8", "--batch-size", "8", "--dtype", "bfloat16", "--steps", "2"]
    r56 = ["--model", "resnet8", "--batch-size", "8", "--steps", "2"]
    k = "2"
  else:
    r50 = ["--model", "resnet50", "--batch-size", "256", "--dtype", "bfloat16", "--steps", "30"]
    r56 = ["--model", "resnet56", "--batch-size", "128", "--steps", "50"]
    k = "16"
  return [r50, r56, r56 + ["--data-on-device"], r56 + ["--data-on-device", "--steps-per-dispatch", k]]


def compile_command(case: list[str], topology: str) -> list[str]:
  """`resnet-jax compile` of the config `resnet-jax bench` builds for `case` (resnet_jax.bench.step)."""
  values, on_device, i = {}, False, 0
  while i < len(case):
    if case[i] == "--data-on-device":
      on_device, i = True, i + 1
    else:
      values[case[i]], i = case[i + 1], i + 2
  k = values.get("--steps-per-dispatch", "1")
  overrides = [f"--config.model={values['--model']}", f"--config.batch_size={values['--batch-size']}",
               f"--config.dtype={values.get('--dtype', 'float32')}", "--config.dataset=synthetic",
               "--config.lr_decay_steps=()", "--config.eval_every_steps=0",
               "--config.checkpoint_every_steps=0", f"--config.steps_per_dispatch={k}",
               f"--config.log_every_steps={k}"]
  if on_device:
    overrides += ["--config.data_on_device=True", "--config.augment=cifar"]
  return [sys.executable, "-m", "resnet_jax.cli", "compile", "--topology", topology, "--config",
          "configs/default.py", *overrides]


def check(topology: str, smoke: bool) -> int:
  """Compiles every case for `topology`; 0 when all fit, 1 when one does not, 2 on bad input."""
  worst = 0
  for case_args in cases(smoke):
    cmd = compile_command(case_args, topology)
    print("$ resnet-jax " + " ".join(cmd[3:]), flush=True)
    code = subprocess.run(cmd, check=False).returncode
    worst = max(worst, code if code in (1, 2) else (1 if code else 0))
  print(f"check for {topology}: " + ("every case fits" if worst == 0 else
                                      "a case does not fit (exit 1)" if worst == 1 else "bad input"))
  return worst


def label(result: dict) -> str:
  """What ran, read from the benchmark's own JSON (so a row can never name another case)."""
  text = f"{result['model']} {result['dtype']} b{result['batch_size']}"
  if result.get("data_on_device"):
    text += " + data on device"
  if result.get("steps_per_dispatch", 1) > 1:
    text += f" + {result['steps_per_dispatch']} steps/dispatch"
  return text


def requested(args: list[str]) -> str:
  """A failed case's label: what was asked for."""
  return "bench " + " ".join(args)


def device_name() -> str:
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    return out.strip().splitlines()[0]
  except (OSError, subprocess.SubprocessError, IndexError):
    return "cpu"


def peak_tflops(name: str) -> float | None:
  for key, peak in PEAK_BF16_TFLOPS.items():  # most specific names first
    if key in name:
      return peak
  return None


def run_case(args: list[str]) -> dict:
  proc = subprocess.run([sys.executable, "-m", "resnet_jax.cli", "bench", *args], capture_output=True,
                        text=True, check=False)
  if proc.returncode:
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1][:300]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes: runs anywhere in seconds")
  parser.add_argument("--check", metavar="TOPOLOGY", default="",
                      help="compile every case for this GPU machine (h100-1, a3-highgpu-8g, ...) here")
  args = parser.parse_args(argv)
  if args.check:
    return check(args.check, args.smoke)
  name = device_name()
  peak = peak_tflops(name)
  results = []
  print(f"device: {name}; dense bf16 peak: {peak or 'unknown'} TFLOP/s", flush=True)
  print("| case | ms/step | images/s | TFLOP/s | % of peak | steps/s | 64k steps (min) | compile s |")
  print("|---|---|---|---|---|---|---|---|")
  for case_args in cases(args.smoke):
    r = run_case(case_args)
    if "error" in r:
      r["case"] = requested(case_args)
      print(f"| {r['case']} | failed: {r['error']} |||||||", flush=True)
      results.append(r)
      continue
    r["case"] = label(r)
    r["steps_per_sec"] = 1e3 / r["step_ms_median"]
    r["paper_schedule_min"] = PAPER_CIFAR_STEPS / r["steps_per_sec"] / 60
    r["fraction_of_peak"] = r["achieved_tflops"] / peak if peak else None
    pct = f"{100 * r['fraction_of_peak']:.1f}" if peak else "-"
    print(f"| {r['case']} | {r['step_ms_median']:.2f} | {r['images_per_sec']:.0f} | "
          f"{r['achieved_tflops']:.1f} | {pct} | {r['steps_per_sec']:.1f} | "
          f"{r['paper_schedule_min']:.1f} | {r['compile_s']:.1f} |", flush=True)
    results.append(r)
  vectorized = run_vectorized(args.smoke)
  print(json.dumps({"device": name, "peak_bf16_tflops": peak, "results": results,
                    "vectorized": vectorized}))
  return 1 if any("error" in r for r in results) or "error" in vectorized else 0


def run_vectorized(smoke: bool) -> dict:
  """benchmarks/vectorized.py in its own process: prints its table, returns its JSON (or an error)."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectorized.py")
  args = ["--smoke"] if smoke else ["--models", "resnet20", "resnet56", "--members", "8",
                                     "--steps", "20"]
  print("\nvectorised sweep members (benchmarks/vectorized.py):", flush=True)
  proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode or not lines:
    error = (proc.stderr or proc.stdout).strip().splitlines()[-1][:300] if (proc.stderr or proc.stdout) else "no output"
    print(f"failed: {error}", flush=True)
    return {"error": error}
  print("\n".join(lines[:-1]), flush=True)
  return json.loads(lines[-1])


if __name__ == "__main__":
  sys.exit(main())
