"""The same minimal ResNet-(6n+2) train step in PyTorch (eager, CPU), timed.

The non-JAX reference point: identical network, loss, optimizer and timing
protocol as `minimal_flax.py`, so ratios between the two say how far XLA:CPU
is from PyTorch's oneDNN kernels on this machine.

  python benchmarks/minimal_torch.py --depth 20 --batch-size 128 --steps 10

prints one JSON line with `step_ms_median`, `images_per_sec` and `compile_s`.
Eager PyTorch compiles nothing; `compile_s` is the cold first step (kernel
selection, allocator warm-up), the closest analogue.

torch is imported inside functions so that this module imports without it.
"""

import argparse
import json
import statistics
import time

NUM_CLASSES = 10
WIDTHS = (16, 32, 64)


def build_model(depth: int):
  """Returns the ResNet-(6n+2) as a torch.nn.Module (NCHW)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  if (depth - 2) % 6:
    raise ValueError(f"depth must be 6n+2, got {depth}")
  n = (depth - 2) // 6

  def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)

  def batch_norm(c):
    # torch's momentum is the weight of the new batch: 0.1 == Flax's 0.9.
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)

  class BasicBlock(nn.Module):
    """Two 3x3 convs with an option-A (parameter-free) shortcut."""

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1, self.bn1 = conv3x3(cin, cout, stride), batch_norm(cout)
      self.conv2, self.bn2 = conv3x3(cout, cout), batch_norm(cout)
      self.stride, self.extra = stride, cout - cin

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      shortcut = x
      if self.stride != 1 or self.extra:
        # Option A: subsample, then zero-pad the new channels (dim 1 in NCHW).
        shortcut = shortcut[:, :, ::self.stride, ::self.stride]
        shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
      return F.relu(y + shortcut)

  class CifarResNet(nn.Module):

    def __init__(self):
      super().__init__()
      self.stem = nn.Sequential(conv3x3(3, WIDTHS[0]), batch_norm(WIDTHS[0]),
                                nn.ReLU())
      blocks, cin = [], WIDTHS[0]
      for stage, width in enumerate(WIDTHS):
        for block in range(n):
          stride = 2 if stage > 0 and block == 0 else 1
          blocks.append(BasicBlock(cin, width, stride))
          cin = width
      self.blocks = nn.Sequential(*blocks)
      self.fc = nn.Linear(WIDTHS[-1], NUM_CLASSES)

    def forward(self, x):
      x = self.blocks(self.stem(x))
      return self.fc(torch.mean(x, dim=(2, 3)))

  return CifarResNet()


def make_optimizer(model):
  """SGD(0.1, momentum 0.9), weight decay 1e-4 on conv/linear weights only."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  decay = [m.weight for m in model.modules()
           if isinstance(m, (nn.Conv2d, nn.Linear))]
  decay_ids = {id(p) for p in decay}
  no_decay = [p for p in model.parameters() if id(p) not in decay_ids]
  return torch.optim.SGD(
      [{"params": decay, "weight_decay": 1e-4},
       {"params": no_decay, "weight_decay": 0.0}],
      lr=0.1, momentum=0.9)


def run(depth: int, batch_size: int, steps: int, seed: int = 0,
        channels_last: bool = False, threads: int | None = None) -> dict:
  """Times the eager train step; returns the same figures as minimal_flax."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  if steps < 1:
    raise ValueError("steps must be >= 1")
  if threads is not None:
    torch.set_num_threads(threads)
  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed)
  images = torch.randn(batch_size, 3, 32, 32, generator=gen)
  labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=gen)
  model = build_model(depth)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  model.train()  # BN uses batch statistics and updates running ones.
  opt = make_optimizer(model)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    opt.step()
    return loss

  # CPU eager ops are synchronous, so wall time around a step is its cost.
  t0 = time.perf_counter()
  step()
  compile_s = time.perf_counter() - t0
  step()  # Second warm-up step, as in minimal_flax (which warms up twice).
  times, cpu_times = [], []
  for _ in range(steps):
    t0, c0 = time.perf_counter(), time.process_time()
    loss = step()
    times.append(time.perf_counter() - t0)
    # CPU time of all threads: less disturbed by other tenants than wall time.
    cpu_times.append(time.process_time() - c0)
  if not torch.isfinite(loss):
    raise FloatingPointError(f"non-finite loss {loss.item()}")
  median_s = statistics.median(times)
  return {
      "step_ms_median": 1e3 * median_s,
      "step_ms_min": 1e3 * min(times),
      "step_cpu_ms_median": 1e3 * statistics.median(cpu_times),
      "images_per_sec": batch_size / median_s,
      "compile_s": compile_s,
      "depth": depth,
      "batch_size": batch_size,
      "steps": steps,
      "channels_last": channels_last,
      "threads": torch.get_num_threads(),
      "torch": torch.__version__,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=20)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--channels-last", action="store_true",
                      help="NHWC memory format for model and inputs")
  parser.add_argument("--threads", type=int, default=None,
                      help="torch.set_num_threads (default: torch's own)")
  args = parser.parse_args(argv)
  print(json.dumps(run(args.depth, args.batch_size, args.steps, args.seed,
                       args.channels_last, args.threads)))


if __name__ == "__main__":
  main()
