"""What XLA:CPU needs of the compiled steps: its library-fusion options (`cpu_fusion`) and K steps
per dispatch as straight-line code rather than a loop. Accelerators get neither."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.training import validation


def cpu_compiler_options(cpu_fusion: str, platform: str) -> dict:
  """XLA compiler options for the train and eval steps on the CPU platform: `{}` elsewhere.

  `cpu_fusion` names YNNPACK library fusions (comma-separated; "" = XLA's default; validated).
  Handing element-wise ops to YNNPACK lets XLA:CPU drop most of the layout transposes in front of
  the weight-gradient convolutions, about half of a ResNet-56 step on CPU (docs/PERFORMANCE.md).
  The option is experimental in XLA, so a jaxlib that does not accept it gets a warning and its
  defaults rather than a failed run.
  """
  names = [n.strip() for n in cpu_fusion.split(",") if n.strip()]
  if not names or platform != "cpu":
    return {}
  return dict(_probed_cpu_options(tuple(names)))


@functools.lru_cache(maxsize=None)
def _probed_cpu_options(names: tuple[str, ...]) -> tuple:
  options = {"xla_cpu_experimental_ynn_fusion_type":
             ",".join(f"LIBRARY_FUSION_TYPE_{validation.CPU_FUSIONS[n]}" for n in names)}
  try:  # Probe once: an unknown option only fails at compile time, deep inside the first step.
    jax.jit(lambda x: x * 2 + 1, compiler_options=options).lower(np.zeros(4, np.float32)).compile()
  except Exception as e:  # pylint: disable=broad-except  # jaxlib raises several types
    warnings.warn(f"cpu_fusion={','.join(names)!r} is not supported by this jaxlib ({e}); using "
                  "XLA's default CPU fusions.", stacklevel=3)
    return ()
  return tuple(options.items())


def scan(strategy, body, state, xs, k: int):
  """`lax.scan(body, state, xs, length=k)`, with per-step outputs stacked [k]."""
  # XLA:CPU runs convolutions inside loop bodies ~30x slower than outside (jax-ml/jax#12868; we
  # measured 0.28 s vs 0.007 s per step of a small conv net), and a loop of one trip is still a loop:
  # on CPU the k steps become straight-line code. Accelerators keep a real loop, compiled once.
  if strategy.platform != "cpu":
    return jax.lax.scan(body, state, xs, length=k)
  outputs = []
  for i in range(k):
    state, out = body(state, None if xs is None else jax.tree_util.tree_map(lambda x: x[i], xs))
    outputs.append(out)
  return state, jax.tree_util.tree_map(lambda *ys: jnp.stack(ys), *outputs)
