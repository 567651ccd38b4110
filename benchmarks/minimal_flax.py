"""A minimal Flax ResNet-(6n+2) train step, timed on synthetic data.

This is the yardstick for `resnet_jax`'s own step: the same CIFAR network of
He et al. (2015), Sec. 4.2, written the plain way (in the style of the Flax
ImageNet example) with nothing but `jax.jit`. If our step is much slower than
this, the overhead is ours, not XLA's.

  python benchmarks/minimal_flax.py --depth 20 --batch-size 128 --steps 10

`--dtype bfloat16` computes in bfloat16 (parameters stay float32), as our `--dtype` does.

prints one JSON line with `step_ms_median`, `images_per_sec` and `compile_s`.
"""

import argparse
import functools
import json
import os
import statistics
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

ModuleDef = Any

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
  """Two 3x3 convs with an option-A (parameter-free) shortcut."""
  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    shortcut = x
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm()(y)
    if shortcut.shape != y.shape:
      # Option A: subsample, then zero-pad the new channels (no parameters).
      shortcut = shortcut[:, ::self.strides, ::self.strides, :]
      extra = self.filters - shortcut.shape[-1]
      shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, extra)))
    return nn.relu(y + shortcut)


class CifarResNet(nn.Module):
  """ResNet-(6n+2) for 32x32 inputs, NHWC."""
  depth: int
  num_classes: int = NUM_CLASSES
  dtype: Any = jnp.float32  # compute dtype; parameters stay float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    if (self.depth - 2) % 6:
      raise ValueError(f"depth must be 6n+2, got {self.depth}")
    n = (self.depth - 2) // 6
    conv = functools.partial(nn.Conv, use_bias=False, padding="SAME",
                             dtype=self.dtype)
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=0.9,
        epsilon=1e-5, dtype=self.dtype)
    x = conv(WIDTHS[0], (3, 3))(x)
    x = nn.relu(norm()(x))
    for stage, width in enumerate(WIDTHS):
      for block in range(n):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, strides, conv=conv, norm=norm)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class TrainState(train_state.TrainState):
  batch_stats: Any


def _kernel_mask(params):
  # Weight decay on conv/dense kernels only, not on BN scales or biases.
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer() -> optax.GradientTransformation:
  return optax.chain(
      optax.add_decayed_weights(1e-4, mask=_kernel_mask),
      optax.sgd(0.1, momentum=0.9))


def create_state(depth: int, seed: int = 0, dtype: str = "float32") -> TrainState:
  model = CifarResNet(depth, dtype=jnp.dtype(dtype))
  # Jitted because eager init dispatches (and compiles) op by op: seconds.
  init = jax.jit(functools.partial(model.init, train=False))
  variables = init(jax.random.PRNGKey(seed),
                   jnp.zeros((1,) + IMAGE_SHAPE, jnp.float32))
  return TrainState.create(
      apply_fn=model.apply, params=variables["params"],
      batch_stats=variables["batch_stats"], tx=make_optimizer())


def train_step(state: TrainState, images, labels):
  """One SGD step with BN in training mode; returns (new state, loss)."""
  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, images,
        train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()
    return loss, updates

  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  state = state.apply_gradients(grads=grads,
                                batch_stats=updates["batch_stats"])
  return state, loss


def synthetic_batch(batch_size: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch_size,) + IMAGE_SHAPE, dtype=np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=(batch_size,), dtype=np.int32)
  return jax.device_put(images), jax.device_put(labels)


def time_steps(step: Callable, state, images, labels, steps: int,
               warmup: int = 2):
  """Runs `warmup` untimed steps, then times `steps` steps one by one.

  Returns the final state and loss, and per-step wall and CPU seconds (CPU
  time of all threads, which other tenants of a shared machine disturb less).
  """
  loss = None
  for _ in range(warmup):
    state, loss = step(state, images, labels)
  jax.block_until_ready((state, loss))
  times, cpu_times = [], []
  for _ in range(steps):
    t0, c0 = time.perf_counter(), time.process_time()
    state, loss = step(state, images, labels)
    jax.block_until_ready((state, loss))
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  return state, loss, times, cpu_times


def run(depth: int, batch_size: int, steps: int, seed: int = 0,
        dtype: str = "float32") -> dict:
  """Compiles and times the minimal train step; returns the figures."""
  if steps < 1:
    raise ValueError("steps must be >= 1")
  images, labels = synthetic_batch(batch_size, seed)
  state = create_state(depth, seed, dtype)
  # The state is donated so that XLA can update parameters in place, as any
  # real training loop would.
  jitted = jax.jit(train_step, donate_argnums=0)
  t0 = time.perf_counter()
  compiled = jitted.lower(state, images, labels).compile()
  compile_s = time.perf_counter() - t0
  state, loss, times, cpu_times = time_steps(compiled, state, images, labels,
                                             steps)
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f"non-finite loss {float(loss)}")
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
      "dtype": dtype,
      "device": str(jax.devices()[0].platform),
      "jax": jax.__version__,
      "flax": flax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=20)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--dtype", default="float32",
                      choices=["float32", "bfloat16"])
  args = parser.parse_args(argv)
  print(json.dumps(run(args.depth, args.batch_size, args.steps, args.seed,
                       args.dtype)))


if __name__ == "__main__":
  main()
