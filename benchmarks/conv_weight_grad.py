"""Times three ways to compute a 3x3 convolution's weight gradient on XLA:CPU.

  python benchmarks/conv_weight_grad.py

For each ResNet-56 stage shape (batch 128): XLA's own (`jax.vjp` of the convolution), nine shifted
matmuls (im2col by slices) and `conv_general_dilated_patches` + one matmul, each compiled with XLA's
default CPU fusions and with `cpu_fusion`'s (YNNPACK eltwise + reduce). Prints ms per call (median of
20) and each result's relative difference from XLA's default. This is the measurement behind
"Tried and not kept" in docs/PERFORMANCE.md: XLA's own was fastest in every shape.
"""

import statistics
import time

import jax
import jax.numpy as jnp

FUSED = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"}
SHAPES = [(128, 32, 32, 16), (128, 16, 16, 32), (128, 8, 8, 64)]


def conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def xla(x, w, dy):
  return jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]


def shifted_matmuls(x, w, dy):
  del w
  n, h, wd, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  taps = [jnp.einsum("nhwc,nhwd->cd", xp[:, i:i + h, j:j + wd, :], dy) for i in range(3) for j in range(3)]
  return jnp.stack(taps).reshape(3, 3, c, -1)


def patches(x, w, dy):
  del w
  p = jax.lax.conv_general_dilated_patches(x, (3, 3), (1, 1), "SAME",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
  g = jnp.einsum("nhwk,nhwd->kd", p, dy)  # k runs over (channel, kh, kw)
  return g.reshape(x.shape[-1], 3, 3, -1).transpose(1, 2, 0, 3)


def main():
  for shape in SHAPES:
    k = jax.random.split(jax.random.key(0), 3)
    c = shape[-1]
    x, dy = jax.random.normal(k[0], shape), jax.random.normal(k[2], shape)
    w = jax.random.normal(k[1], (3, 3, c, c))
    reference = None
    for name, fn in (("xla", xla), ("shifted_matmuls", shifted_matmuls), ("patches", patches)):
      for label, options in (("default", None), ("fused", FUSED)):
        f = jax.jit(fn, compiler_options=options)
        out = f(x, w, dy).block_until_ready()
        reference = out if reference is None else reference
        times = []
        for _ in range(20):
          t = time.perf_counter()
          f(x, w, dy).block_until_ready()
          times.append(time.perf_counter() - t)
        diff = float(jnp.max(jnp.abs(out - reference)) / jnp.max(jnp.abs(reference)))
        print(f"{'x'.join(map(str, shape))} {name:16s} {label:8s} "
              f"{1e3 * statistics.median(times):8.2f} ms  rel. diff {diff:.1e}", flush=True)


if __name__ == "__main__":
  main()
