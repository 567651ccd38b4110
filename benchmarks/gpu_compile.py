"""The table of docs/results/gpu_compile: `resnet-jax compile` for GPU machines, on a host without one.

  python benchmarks/gpu_compile.py --out docs/results/gpu_compile [--jobs 1] [--only resnet50]

Needs the `gpu` extra (the CUDA plugin and libraries; no GPU, no driver). Each row is one
`resnet-jax compile` in its own process, kept in OUT/rows/<name>.json and .txt as
benchmarks/tpu_compile.py keeps its rows (whose functions this script uses), so it resumes where it
stopped and a row is recompiled by deleting its file; OUT/table.md is written from every row there.
Rows, in the order they run:

- ResNet-50, the paper's ImageNet preset (configs/imagenet.py:resnet50) in bf16 at 256 images per
  GPU (the batch NVIDIA suggests for mixed-precision ResNet-50 training per GPU, in its
  DeepLearningExamples) on 1 and 8 H100s;
- CIFAR-10, section 4.2's preset (configs/cifar10.py:resnet20, batch 128) on one H100;
- then ResNet-50 float32 on 8 H100s, bf16 on 8 A100 80GB, 8 H200, one L4 and 2 hosts of 8 H100,
  ResNet-152 bf16 on 8 H100, and ResNet-56 and ResNet-110 on one H100;
- the `resnet50-modern` preset (torchvision's v1.5 network) in bf16 and float32 on 8 A100 80GB:
  the network and machine of NVIDIA's published PyTorch ResNet-50 v1.5 training throughput, which
  the results page sets beside the estimate;
- the largest per-GPU batch of ResNet-50 bf16 that fits an L4 (`--max-batch`: several compiles).

A ResNet-50 row takes 1-3 minutes of a 2-core host.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tpu_compile  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from resnet_jax.targets import gpu  # pylint: disable=g-import-not-at-top,wrong-import-position


def rows() -> list[dict]:
  def imagenet(model, dtype, machine, per_gpu=256):
    target = gpu.find(machine)
    n = target.hosts * target.machine.gpus
    return {"name": f"{model}-{dtype}-{machine}", "topology": machine, "label": model,
            "config": f"configs/imagenet.py:{model}",
            "overrides": [f"--config.dtype={dtype}", f"--config.batch_size={per_gpu * n}",
                          f"--config.eval_batch_size={32 * n}"]}

  def cifar(model, machine):
    return {"name": f"{model}-cifar-{machine}", "topology": machine,
            "config": f"configs/cifar10.py:{model}", "overrides": []}

  l4_max = {**imagenet("resnet50", "bfloat16", "l4-1"), "name": "resnet50-bfloat16-l4-1-max-batch",
            "label": "resnet50 (--max-batch)"}
  l4_max["overrides"] = [*l4_max["overrides"], "--max-batch"]
  return [imagenet("resnet50", "bfloat16", "h100-1"), imagenet("resnet50", "bfloat16", "h100-8"),
          cifar("resnet20", "h100-1"),
          imagenet("resnet50", "float32", "h100-8"), imagenet("resnet50", "bfloat16", "a100-80gb-8"),
          imagenet("resnet50", "bfloat16", "h200-8"), imagenet("resnet50", "bfloat16", "l4-1"),
          imagenet("resnet50", "bfloat16", "h100-16"), imagenet("resnet152", "bfloat16", "h100-8"),
          cifar("resnet56", "h100-1"), cifar("resnet110", "h100-1"),
          imagenet("resnet50-modern", "bfloat16", "a100-80gb-8"),
          imagenet("resnet50-modern", "float32", "a100-80gb-8"), l4_max]


def main(argv=None) -> int:
  # One compile at a time by default: a GPU compile of ResNet-50 takes most of 2 cores.
  return tpu_compile.main(argv, rows(), jobs=1, make_table=lambda folder: (
      tpu_compile.table(folder, rows()).replace("| slice |", "| machine |")
      .replace("HBM needed / chip GiB", "memory needed / usable GiB")))


if __name__ == "__main__":
  sys.exit(main())
