"""Times our train step against the minimal Flax and PyTorch reference steps.

For each depth, runs one after another, each in its own subprocess (so that
no two share a thread pool or a warm allocator):

  ours   python -m resnet_jax.cli bench --model resnet{D} --batch-size B --steps S
  flax   python benchmarks/minimal_flax.py --depth D --batch-size B --steps S
  torch  python benchmarks/minimal_torch.py --depth D --batch-size B --steps S

Each command's last stdout line must be a JSON object with `step_ms_median`.
With `--repeats R` the three are alternated R times (the starting one rotates)
and the median of the R medians is reported, since a shared CPU is noisy.
Prints a markdown table, then one JSON line with every figure; `--out PATH`
also writes the table to PATH under a line naming the CPU (`lscpu`'s model)
and the date. `--dtype bfloat16` runs all three in bfloat16 (parameters stay
float32); `--cpu-fusion F` sets our step's `cpu_fusion` (e.g. adding `conv`).

  python benchmarks/compare.py --depths 20,56 --batch-size 128 --steps 10
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

try:
  import resource
except ImportError:  # Not on Windows; the noise figure is then skipped.
  resource = None

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
RUNNERS = ("ours", "flax", "torch")


def command(runner: str, depth: int, batch_size: int, steps: int,
            torch_args=(), dtype: str = "float32",
            cpu_fusion: str | None = None) -> list[str]:
  common = ["--batch-size", str(batch_size), "--steps", str(steps),
            "--dtype", dtype]
  if runner == "ours":
    fusion = [] if cpu_fusion is None else [f"--cpu-fusion={cpu_fusion}"]
    return [sys.executable, "-m", "resnet_jax.cli", "bench",
            "--model", f"resnet{depth}"] + common + fusion
  script = os.path.join(HERE, f"minimal_{runner}.py")
  extra = list(torch_args) if runner == "torch" else []
  return [sys.executable, script, "--depth", str(depth)] + common + extra


def environment(runner: str, xla_flags: str | None) -> dict:
  env = dict(os.environ)
  # `python -m resnet_jax.cli` must find the checkout even if not installed.
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
  if runner != "torch":
    # The comparison is on the CPU, even on a machine with an accelerator.
    env.setdefault("JAX_PLATFORMS", "cpu")
    if xla_flags is not None:
      env["XLA_FLAGS"] = xla_flags
  return env


def _busy_cpu_s():
  """CPU-seconds the whole machine has spent busy (Linux), or None."""
  try:
    with open("/proc/stat") as f:
      ticks = [int(v) for v in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
  return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s():
  if resource is None:
    return None
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def run_one(runner: str, cmd: list[str], env: dict, timeout: float):
  """Runs one benchmark command; returns (figures or None, error or None)."""
  busy0, mine0, t0 = _busy_cpu_s(), _children_cpu_s(), time.monotonic()
  try:
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return None, f"timed out after {timeout:.0f} s"
  busy1, mine1, t1 = _busy_cpu_s(), _children_cpu_s(), time.monotonic()
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  if proc.returncode != 0 or not lines:
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
    return None, f"exit {proc.returncode}: {tail}"
  try:
    figures = json.loads(lines[-1])
    float(figures["step_ms_median"])
  except (ValueError, KeyError, TypeError) as e:
    return None, f"last stdout line is not the expected JSON ({e!r}): " \
        f"{lines[-1][:200]}"
  if None not in (busy0, busy1, mine0, mine1):
    # CPU used by other processes while this one ran, in cores: the noise
    # that a shared machine adds. Near 0 means the figure is clean.
    others = (busy1 - busy0) - (mine1 - mine0)
    figures["others_cores"] = max(0.0, others / max(t1 - t0, 1e-9))
  return figures, None


def _median(runs: list[dict], key: str):
  values = [float(r[key]) for r in runs if key in r]
  return statistics.median(values) if values else None


def _ratio(a, b):
  return a / b if a is not None and b is not None and b > 0 else None


def _fmt(x, spec):
  return "n/a" if x is None else format(x, spec)


def compare(depths, batch_size, steps, repeats=1, xla_flags=None,
            torch_args=(), timeout=1800.0, log=sys.stderr, dtype="float32",
            cpu_fusion=None) -> dict:
  """Runs every (depth, runner) `repeats` times; returns the summary dict."""
  have_torch = importlib.util.find_spec("torch") is not None
  runners = [r for r in RUNNERS if r != "torch" or have_torch]
  if not have_torch:
    print("note: torch is not installed, skipping the PyTorch reference "
          "(pip install -e .[bench])", file=log)
  results = {}
  for depth in depths:
    runs = {r: [] for r in runners}
    errors = {r: [] for r in runners}
    for rep in range(repeats):
      # Rotate who goes first so that none always runs on a cold machine.
      order = runners[rep % len(runners):] + runners[:rep % len(runners)]
      for runner in order:
        cmd = command(runner, depth, batch_size, steps, torch_args, dtype,
                      cpu_fusion)
        figures, error = run_one(runner, cmd, environment(runner, xla_flags),
                                 timeout)
        if error:
          print(f"[depth {depth}] {runner} failed ({' '.join(cmd[1:])}): "
                f"{error}", file=log)
          errors[runner].append(error)
        else:
          others = figures.get("others_cores")
          note = "" if others is None else \
              f" (other processes busy {others:.2f} cores)"
          print(f"[depth {depth}] {runner} repeat {rep + 1}/{repeats}: "
                f"{figures['step_ms_median']:.1f} ms/step{note}", file=log)
          runs[runner].append(figures)
        log.flush()
    entry = {}
    for runner in RUNNERS:
      if runner not in runners:
        entry[runner] = {"missing": "torch not installed"}
      elif not runs[runner]:
        entry[runner] = {"missing": errors[runner][-1]}
      else:
        entry[runner] = {
            "step_ms_median": _median(runs[runner], "step_ms_median"),
            "images_per_sec": _median(runs[runner], "images_per_sec"),
            "compile_s": _median(runs[runner], "compile_s"),
            "others_cores": _median(runs[runner], "others_cores"),
            "runs": runs[runner],
        }
    ms = {r: entry[r].get("step_ms_median") for r in RUNNERS}
    entry["ratios"] = {
        "ours/flax": _ratio(ms["ours"], ms["flax"]),
        "ours/torch": _ratio(ms["ours"], ms["torch"]),
        "flax/torch": _ratio(ms["flax"], ms["torch"]),
    }
    results[str(depth)] = entry
  return {
      "batch_size": batch_size,
      "steps": steps,
      "repeats": repeats,
      "dtype": dtype,
      "cpu_fusion": cpu_fusion,
      "cpu": cpu_model(),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime(
          "%Y-%m-%d %H:%M UTC"),
      "xla_flags": xla_flags,
      "torch_args": list(torch_args),
      "results": results,
  }


def cpu_model() -> str:
  """`lscpu`'s model name (the CPU the figures belong to), else Python's."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True,
                         check=False, timeout=30).stdout
  except (OSError, subprocess.SubprocessError):
    out = ""
  for line in out.splitlines():
    if line.startswith("Model name:"):
      return line.split(":", 1)[1].strip()
  return platform.processor() or platform.machine() or "unknown CPU"


def report(summary: dict) -> str:
  """The table under one line saying where, when and how it was measured."""
  fusion = summary.get("cpu_fusion")
  head = (f"{summary['cpu']} ({os.cpu_count()} CPUs), {summary['date']}: "
          f"batch {summary['batch_size']}, {summary['dtype']}, median of "
          f"{summary['steps']} steps, {summary['repeats']} alternated "
          f"repeat(s)" + ("" if fusion is None else f", cpu_fusion={fusion!r}"))
  return head + "\n\n" + markdown_table(summary) + "\n"


def markdown_table(summary: dict) -> str:
  rows = [
      "| depth | ours ms/step | minimal Flax ms/step | PyTorch ms/step "
      "| ours/flax | ours/torch | flax/torch |",
      "|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for depth, entry in summary["results"].items():
    ms = [_fmt(entry[r].get("step_ms_median"), ".1f") for r in RUNNERS]
    ratios = [_fmt(v, ".2f") for v in entry["ratios"].values()]
    rows.append(f"| {depth} | " + " | ".join(ms + ratios) + " |")
  return "\n".join(rows)


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--depths", default="20,56",
                      help="comma-separated 6n+2 depths")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=1,
                      help="alternate the three this many times; report "
                      "medians")
  parser.add_argument("--xla-flags", default=None,
                      help="XLA_FLAGS for the two JAX subprocesses (default: "
                      "inherited)")
  parser.add_argument("--torch-channels-last", action="store_true",
                      help="pass --channels-last to the PyTorch reference")
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="pass --threads N to the PyTorch reference")
  parser.add_argument("--timeout", type=float, default=1800.0,
                      help="seconds allowed per subprocess")
  parser.add_argument("--dtype", default="float32",
                      choices=["float32", "bfloat16"],
                      help="compute dtype of all three steps")
  parser.add_argument("--cpu-fusion", default=None,
                      help="our step's cpu_fusion (default: the config's)")
  parser.add_argument("--out", default=None,
                      help="also write the table, with the CPU model and "
                      "date, to this markdown file")
  argv = list(sys.argv[1:] if argv is None else argv)
  # argparse takes a value that starts with "--" for an option, and XLA flags
  # always do: glue `--xla-flags VALUE` into `--xla-flags=VALUE`.
  for i, arg in enumerate(argv[:-1]):
    if arg == "--xla-flags":
      argv[i:i + 2] = [f"--xla-flags={argv[i + 1]}"]
      break
  args = parser.parse_args(argv)
  depths = [int(d) for d in args.depths.split(",") if d.strip()]
  if args.repeats < 1:
    parser.error("--repeats must be >= 1")
  torch_args = ["--channels-last"] if args.torch_channels_last else []
  if args.torch_threads is not None:
    torch_args += ["--threads", str(args.torch_threads)]
  summary = compare(depths, args.batch_size, args.steps, args.repeats,
                    args.xla_flags, torch_args, args.timeout,
                    dtype=args.dtype, cpu_fusion=args.cpu_fusion)
  print(markdown_table(summary))
  if args.out:
    with open(args.out, "w") as f:
      f.write(report(summary))
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
