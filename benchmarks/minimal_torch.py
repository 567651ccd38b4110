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


def build_model(depth: int, bn_group_size: int = 0):
  """Returns the ResNet-(6n+2) as a torch.nn.Module (NCHW).

  `bn_group_size` > 0 takes BN's training statistics over groups of that many examples, as
  `resnet_jax`'s BatchNorm does (the paper's per-GPU statistics); 0 is PyTorch's whole-batch BN.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  if (depth - 2) % 6:
    raise ValueError(f"depth must be 6n+2, got {depth}")
  n = (depth - 2) // 6

  def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)

  class GroupBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with training statistics over groups of `group_size` examples.

    Running statistics move towards the mean over groups of each group's mean and (unbiased, as
    PyTorch keeps it) variance. A group size of 0, or one not below the batch, is plain BatchNorm2d.
    """

    def __init__(self, c, group_size):
      # torch's momentum is the weight of the new batch: 0.1 == Flax's 0.9.
      super().__init__(c, eps=1e-5, momentum=0.1)
      self.group_size = group_size

    def forward(self, x):
      n, g = x.shape[0], self.group_size
      if not self.training or not g or g >= n:
        return super().forward(x)
      if n % g:
        raise ValueError(f"bn_group_size={g} does not divide the batch of {n}")
      xg = x.reshape(n // g, g, *x.shape[1:])
      mean = xg.mean(dim=(1, 3, 4), keepdim=True)
      var = xg.var(dim=(1, 3, 4), unbiased=False, keepdim=True)
      with torch.no_grad():
        count = g * x.shape[2] * x.shape[3]
        self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.mean(0).flatten())
        self.running_var.mul_(1 - self.momentum).add_(
            self.momentum * var.mean(0).flatten() * count / (count - 1))
        self.num_batches_tracked += 1
      y = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
      return y * self.weight[:, None, None] + self.bias[:, None, None]

  def batch_norm(c):
    return GroupBatchNorm2d(c, bn_group_size)

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

  model = CifarResNet()
  init_like_torchvision(model)
  return model


def init_like_torchvision(model) -> None:
  """torchvision's ResNet init (and ours): He fan-out normal convs, BN scale 1 and bias 0; the
  classifier keeps PyTorch's default nn.Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  from torch import nn  # pylint: disable=g-import-not-at-top

  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.ones_(m.weight)
      nn.init.zeros_(m.bias)


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


def make_step(depth: int, batch_size: int, seed: int = 0, channels_last: bool = False,
              dtype: str = "float32"):
  """The eager train step on one fixed synthetic batch (a closure returning the loss); `run` times
  it and benchmarks/step_profile.py profiles it."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

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

  # bfloat16: CPU autocast (oneDNN's bf16 kernels where the CPU has them);
  # parameters and the optimizer stay float32, as in the JAX steps.
  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16,
                        enabled=dtype == "bfloat16"):
      loss = F.cross_entropy(model(images).float(), labels)
    loss.backward()
    opt.step()
    return loss

  return step


def run(depth: int, batch_size: int, steps: int, seed: int = 0,
        channels_last: bool = False, threads: int | None = None,
        dtype: str = "float32") -> dict:
  """Times the eager train step; returns the same figures as minimal_flax."""
  import torch  # pylint: disable=g-import-not-at-top

  if steps < 1:
    raise ValueError("steps must be >= 1")
  if threads is not None:
    torch.set_num_threads(threads)
  step = make_step(depth, batch_size, seed, channels_last, dtype)

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
      "dtype": dtype,
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
  parser.add_argument("--dtype", default="float32",
                      choices=["float32", "bfloat16"])
  args = parser.parse_args(argv)
  print(json.dumps(run(args.depth, args.batch_size, args.steps, args.seed,
                       args.channels_last, args.threads, args.dtype)))


if __name__ == "__main__":
  main()
