"""The table of docs/results/tpu_compile: `resnet-jax compile` for each preset x dtype x TPU slice.

  python benchmarks/tpu_compile.py --out docs/results/tpu_compile [--jobs 2] [--only resnet50]

Each row is one `resnet-jax compile` in its own process (JAX_PLATFORMS=cpu: libtpu compiles, no TPU
is used), its JSON kept in OUT/rows/<name>.json, so the script resumes where it stopped and a row can
be recompiled by deleting its file. Then OUT/table.md is written from every row. Compile times
are left out of the table: with several compiles at once they time the machine's load, not the
compiler (time one alone with `resnet-jax compile`). Rows:

- ImageNet, the paper's preset (configs/imagenet.py:NAME) at 128 images per chip, bf16 and f32:
  ResNet-50 and ResNet-152 on v4-8, v5e-8, v5p-8 and v6e-8, and ResNet-50 on the multi-host v5e-16;
- CIFAR-10, section 4.2's preset (configs/cifar10.py:NAME, batch 128 in all) on the same four;
- ResNet-50 "-modern" (bf16, batch 1024) on v3-8: the setting of the Flax ImageNet example, whose
  measured training time (its README) is the published figure the estimate is set beside;
- the largest per-chip batch of ResNet-50 bf16 that fits a v5e chip (`--max-batch`).
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys

SLICES = ("v4-8", "v5e-8", "v5p-8", "v6e-8")


def rows() -> list[dict]:
  out = []
  for model in ("resnet50", "resnet152"):
    for dtype in ("bfloat16", "float32"):
      for topology in SLICES + (("v5e-16",) if model == "resnet50" else ()):
        chips = int(topology.split("-")[1])
        out.append({"name": f"{model}-{dtype}-{topology}", "topology": topology,
                    "config": f"configs/imagenet.py:{model}",
                    "overrides": [f"--config.dtype={dtype}", f"--config.batch_size={128 * chips}",
                                  f"--config.eval_batch_size={16 * chips}"]})
  for model in ("resnet20", "resnet56", "resnet110"):
    for topology in SLICES:
      out.append({"name": f"{model}-cifar-{topology}", "topology": topology,
                  "config": f"configs/cifar10.py:{model}", "overrides": ["--config.eval_batch_size=512"]})
  out.append({"name": "resnet50-modern-v3-8", "topology": "v3-8",
              "config": "configs/imagenet.py:resnet50-modern", "overrides": []})
  out.append({"name": "resnet50-bfloat16-v5e-8-max-batch", "topology": "v5e-8",
              "config": "configs/imagenet.py:resnet50",
              "overrides": ["--config.dtype=bfloat16", "--config.batch_size=1024",
                            "--config.eval_batch_size=128", "--max-batch"]})
  return out


def compile_row(row: dict, folder: str) -> str:
  path = os.path.join(folder, f"{row['name']}.json")
  if os.path.exists(path):
    return f"{row['name']}: done before"
  cmd = [sys.executable, "-m", "resnet_jax.cli", "compile", "--topology", row["topology"],
         "--config", row["config"], *row["overrides"]]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "RESNET_JAX_HUGEPAGES": "0"}
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode not in (0, 1) or not lines:  # 1 with a report: it does not fit, still a result
    return f"{row['name']}: FAILED ({proc.returncode}): {proc.stderr.strip().splitlines()[-3:]}"
  result = json.loads(lines[-1])
  result["command"] = "resnet-jax " + " ".join(cmd[3:])
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=1)
  os.replace(path + ".tmp", path)
  return f"{row['name']}: {result['estimate']['images_per_sec_per_chip']:.0f} images/s/chip estimated"


def table(folder: str) -> str:
  gib = 2**30
  lines = ["| model | dtype | slice | batch/chip | HBM needed / chip GiB | fits | XLA / counted FLOPs | "
           "all-reduce MB/step (params MB) | est. step ms | bound | est. images/s/chip | host "
           "cores needed / vCPUs |", "|" + "---|" * 12]
  for row in rows():
    path = os.path.join(folder, f"{row['name']}.json")
    if not os.path.exists(path):
      continue
    r = json.load(open(path))
    reduced = r["collectives"].get("all-reduce", {}).get("bytes", 0) * r["devices_per_chip"]
    e, h = r["estimate"], r["host"]
    lines.append(
        f"| {r['model']} | {r['dtype']} | {r['topology']} ({r['hosts']} host{'s' * (r['hosts'] > 1)}) "
        f"| {r['batch_per_chip']} | {r['hbm']['needed'] / gib:.2f} / {r['hbm']['chip'] / gib:.0f} | "
        f"{'yes' if r['hbm']['fits'] else 'NO'} | {r['flops']['ratio']:.2f} | {reduced / 1e6:.1f} "
        f"({r['param_bytes'] / 1e6:.1f}) | {e['step_ms']:.1f} | {e['bound']} | "
        f"{e['images_per_sec_per_chip']:,.0f} | {h['cores_needed']:.0f} / {h['vcpus']:.0f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="results folder (rows/ and table.md)")
  parser.add_argument("--jobs", type=int, default=2, help="compiles at once")
  parser.add_argument("--only", default="", help="only rows whose name contains this")
  args = parser.parse_args(argv)
  folder = os.path.join(args.out, "rows")
  os.makedirs(folder, exist_ok=True)
  todo = [r for r in rows() if args.only in r["name"]]
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    for line in pool.map(lambda r: compile_row(r, folder), todo):
      print(line, flush=True)
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(table(folder))
  print(f"wrote {os.path.join(args.out, 'table.md')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
