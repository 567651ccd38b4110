"""The step a GPU run would compile, lowered for the CUDA platform on a host without a GPU.

Compiling for a GPU needs the CUDA plugin (jax-cuda12-plugin, ~180 MB) and CUDA's own compilers and
libraries (several GB of nvidia-* wheels) to produce machine code, so without a GPU this goes as far
as lowering: `jax.export` turns the trainer's train dispatch and eval step, built for the "cuda"
platform (a real `lax.scan` loop for K steps per dispatch, no XLA:CPU options), into StableHLO for
CUDA. What is checked there is what could leak from a CPU host into a GPU run: XLA:CPU compiler
options (they live on `jax.jit`, never in the lowered module, and `cpu_compiler_options` gives none
for "cuda") and custom calls only the CPU backend implements.
"""

import re

import jax
from jax import export
import ml_collections

from resnet_jax import data, models
from resnet_jax.training.trainer import Trainer

# Custom-call targets only XLA:CPU implements (LAPACK, DUCC FFT, YNNPACK and oneDNN kernels): none may
# appear in a program lowered for CUDA.
CPU_ONLY_CALLS = re.compile(r"lapack|ducc|ynn|onednn|__cpu|xla_cpu", re.I)


def lower_for_cuda(config: ml_collections.ConfigDict) -> dict:
  """The train dispatch and eval step of `config` lowered for CUDA: their custom calls, loops and
  size, and whether any XLA:CPU-only piece is in them."""
  config = config.copy_and_resolve_references()
  config.num_devices = 1  # lowering needs a device count, not devices; one keeps it host-independent
  spec = data.spec(config, models.default_image_size(config.model))
  trainer = Trainer(config, data=spec, devices=jax.devices("cpu")[:1], platform="cuda")
  state = trainer.abstract_state()
  fn, args = trainer.dispatch_call(0, config.steps_per_dispatch, abstract=True)
  programs = {
      "train": export.export(fn, platforms=("cuda",))(state, *args).mlir_module(),
      "eval": export.export(trainer.strategy.eval_step, platforms=("cuda",))(
          state, trainer.abstract_eval_batch()).mlir_module(),
  }
  out = {"compiler_options": trainer.strategy.compiler_options or {}}
  for name, text in programs.items():
    calls = sorted(set(re.findall(r"stablehlo\.custom_call @([\w.]+)", text)))
    out[name] = {"custom_calls": calls, "cpu_only_calls": [c for c in calls if CPU_ONLY_CALLS.search(c)],
                 "while_loops": text.count("stablehlo.while"), "chars": len(text)}
  return out
