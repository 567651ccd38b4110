"""The table of docs/results/tpu_compile: `resnet-jax compile` for each preset x dtype x TPU slice.

  python benchmarks/tpu_compile.py --out docs/results/tpu_compile [--jobs 2] [--only resnet50]

Each row is one `resnet-jax compile` in its own process (JAX_PLATFORMS=cpu: libtpu compiles, no TPU
is used), its JSON kept in OUT/rows/<name>.json and what it printed in <name>.txt, so the script
resumes where it stopped and a row can be recompiled by deleting its file. Then OUT/table.md is
written from every row there. Compile times are left out of the table: with several compiles at
once they time the machine's load, not the compiler (time one alone with `resnet-jax compile`).
Rows, in the order they run:

- the largest per-chip batch of ResNet-50 bf16 that fits a v5e chip (`--max-batch`: several
  compiles);
- ResNet-50 "-modern" (bf16, batch 1024) on v3-8: the setting of the Flax ImageNet example, whose
  measured training time (its README) is the published figure the estimate is set beside;
- ImageNet, the paper's preset (configs/imagenet.py:NAME) at 128 images per chip (a v4-8 or v5p-8
  is 4 chips, a v5e-8 or v6e-8 is 8): ResNet-50 bf16 on v4-8, v5e-8, v5p-8, v6e-8 and the
  multi-host v5e-16, ResNet-50 f32 on v4-8 and v5e-8, ResNet-152 bf16 on v5e-8 and v5p-8;
- CIFAR-10, section 4.2's preset (configs/cifar10.py:NAME, batch 128 in all): ResNet-20, 56 and 110
  on v4-8 and v5e-8.

A ResNet-50 row takes 2-7 minutes of a 2-core host (each compile is mostly one core), the whole
matrix a few hours; `resnet-jax compile` takes any other preset, dtype and slice.
"""

import argparse
import concurrent.futures
import json
import math
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from resnet_jax.targets import chips as chips_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

SLICES = ("v4-8", "v5e-8", "v5p-8", "v6e-8")


def rows() -> list[dict]:
  def imagenet(model, dtype, topology):
    chips = math.prod(int(d) for d in chips_lib.find(topology).topology.split(":")[1].split("x"))
    return {"name": f"{model}-{dtype}-{topology}", "topology": topology,
            "config": f"configs/imagenet.py:{model}",
            "overrides": [f"--config.dtype={dtype}", f"--config.batch_size={128 * chips}",
                          f"--config.eval_batch_size={16 * chips}"]}

  out = [{"name": "resnet50-bfloat16-v5e-8-max-batch", "topology": "v5e-8",
          "config": "configs/imagenet.py:resnet50",
          "overrides": ["--config.dtype=bfloat16", "--config.batch_size=1024",
                        "--config.eval_batch_size=128", "--max-batch"]},
         {"name": "resnet50-modern-v3-8", "topology": "v3-8",
          "config": "configs/imagenet.py:resnet50-modern", "overrides": []}]
  out += [imagenet("resnet50", "bfloat16", t) for t in SLICES + ("v5e-16",)]
  out += [imagenet("resnet50", "float32", t) for t in ("v4-8", "v5e-8")]
  out += [imagenet("resnet152", "bfloat16", t) for t in ("v5e-8", "v5p-8")]
  for model in ("resnet20", "resnet56", "resnet110"):
    for topology in ("v4-8", "v5e-8"):
      out.append({"name": f"{model}-cifar-{topology}", "topology": topology,
                  "config": f"configs/cifar10.py:{model}", "overrides": ["--config.eval_batch_size=512"]})
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
  with open(os.path.join(folder, f"{row['name']}.txt"), "w") as f:  # what the command printed
    f.write(f"$ {result['command']}\n{proc.stderr}")
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=1)
  os.replace(path + ".tmp", path)
  if "estimate" not in result:
    return f"{row['name']}: does not fit"
  return f"{row['name']}: {result['estimate']['images_per_sec_per_chip']:.0f} images/s/chip estimated"


def table(folder: str, rows_=None) -> str:
  """The markdown table of the rows of `rows_` (default: this script's) compiled in `folder`; a GPU
  row's memory is set against the share JAX's allocator takes, a TPU's against all its HBM."""
  gib = 2**30
  lines = ["| model | dtype | slice | batch/chip | HBM needed / chip GiB | fits | XLA / counted FLOPs | "
           "all-reduce MB/step (params MB) | est. step ms | bound | est. images/s/chip | host "
           "cores needed / vCPUs |", "|" + "---|" * 12]
  for row in rows() if rows_ is None else rows_:
    path = os.path.join(folder, f"{row['name']}.json")
    if not os.path.exists(path):
      continue
    r = json.load(open(path))
    model = row.get("label", r["model"])  # a preset's name where the model's alone is ambiguous
    if "flops" not in r:  # the compiler refused it for want of HBM
      lines.append(f"| {model} | {r['dtype']} | {r['topology']} | {r['batch_per_chip']} | "
                   f"{r['hbm']['needed'] / gib:.2f} / {_usable(r) / gib:.0f} | NO |" + " - |" * 6)
      continue
    reduced = r["collectives"].get("all-reduce", {}).get("bytes", 0) * r["devices_per_chip"]
    e, h = r["estimate"], r["host"]
    lines.append(
        f"| {model} | {r['dtype']} | {r['topology']} ({r['hosts']} host{'s' * (r['hosts'] > 1)}) "
        f"| {r['batch_per_chip']} | {r['hbm']['needed'] / gib:.2f} / {_usable(r) / gib:.0f} | "
        f"{'yes' if r['hbm']['fits'] else 'NO'} | {r['flops']['ratio']:.2f} | {reduced / 1e6:.1f} "
        f"({r['param_bytes'] / 1e6:.1f}) | {e['step_ms']:.1f} | {e['bound']} | "
        f"{e['images_per_sec_per_chip']:,.0f} | {h['cores_needed']:.0f} / {h['vcpus']:.0f} |")
  return "\n".join(lines) + "\n"


def _usable(r: dict) -> float:
  return r["hbm"].get("usable", r["hbm"]["chip"])  # rows compiled before GPUs have no "usable"


def main(argv=None, all_rows=None, jobs: int = 2, make_table=None) -> int:
  """Compiles the rows (`all_rows`, default this matrix) not yet in --out, then writes table.md.

  benchmarks/gpu_compile.py runs its own matrix and table through here.
  """
  all_rows = rows() if all_rows is None else all_rows
  make_table = make_table or table
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="results folder (rows/ and table.md)")
  parser.add_argument("--jobs", type=int, default=jobs, help="compiles at once")
  parser.add_argument("--only", default="", help="only rows whose name contains this")
  args = parser.parse_args(argv)
  folder = os.path.join(args.out, "rows")
  os.makedirs(folder, exist_ok=True)
  todo = [r for r in all_rows if args.only in r["name"]]
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    for line in pool.map(lambda r: compile_row(r, folder), todo):
      print(line, flush=True)
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(make_table(folder))
  print(f"wrote {os.path.join(args.out, 'table.md')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
