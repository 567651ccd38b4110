"""`resnet-jax bench`: times our compiled train step on synthetic data (the exact step training runs)."""

import os
import statistics
import time

import jax
import numpy as np

from resnet_jax.config import default_config
from resnet_jax.models import flops
from resnet_jax.training import memory
from resnet_jax.training.trainer import Trainer


def run_benchmark(model: str = "resnet20", batch_size: int = 128, steps: int = 10,
                  dtype: str = "float32", image_size: int = 0, parallelism: str = "jit",
                  num_devices: int = 0, warmup_steps: int = 2, scan_blocks: bool = False,
                  remat_blocks: bool = False, steps_per_dispatch: int = 1,
                  data_on_device: bool = False, cpu_fusion: str | None = None) -> dict:
  """Compiles the train step, runs `warmup_steps` dispatches, then times `steps` dispatches.

  Each dispatch runs `steps_per_dispatch` steps (drawing its batches on device with
  `data_on_device`); times are per step. Returns step_ms_median, images_per_sec, compile_s, devices,
  flops_per_step (3 x forward, the usual estimate of forward + backward, 2 FLOPs per multiply-add) and
  achieved_tflops, plus the compiled step's memory footprint from XLA's memory analysis.
  """
  trainer, state, fn, args = prepare(
      model=model, batch_size=batch_size, dtype=dtype, image_size=image_size,
      parallelism=parallelism, num_devices=num_devices, total_steps=max(1, steps + warmup_steps),
      scan_blocks=scan_blocks, remat_blocks=remat_blocks, steps_per_dispatch=steps_per_dispatch,
      data_on_device=data_on_device, cpu_fusion=cpu_fusion)
  config, strategy, k = trainer.config, trainer.strategy, steps_per_dispatch
  compiled, compile_s, times, metrics = _time(fn, state, args, k, warmup_steps, steps)
  step_s = statistics.median(times)
  side = trainer.image_shape[0]
  macs = flops.count_macs(trainer.model, side, trainer.image_shape[-1])
  flops_per_step = 3 * 2 * macs * batch_size
  result = {
      "model": model, "batch_size": batch_size, "dtype": dtype, "image_size": side,
      "parallelism": parallelism, "devices": len(strategy.devices), "backend": jax.default_backend(),
      "scan_blocks": scan_blocks, "remat_blocks": remat_blocks, "steps_per_dispatch": k,
      "data_on_device": data_on_device, "cpu_fusion": config.cpu_fusion,
      "compiler_options": strategy.compiler_options or {},
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
      "steps": steps, "step_ms_median": 1e3 * step_s, "step_ms_min": 1e3 * min(times),
      "images_per_sec": batch_size / step_s, "compile_s": compile_s,
      "flops_per_step": flops_per_step, "achieved_tflops": flops_per_step / step_s / 1e12,
  }
  result.update(_memory(compiled))
  if not np.all(np.isfinite(strategy.fetch(metrics)["train/loss"])):  # a benchmark's own check
    raise RuntimeError("the benchmark's loss is not finite; the timed step is broken.")
  return result


def prepare(model: str = "resnet20", batch_size: int = 128, dtype: str = "float32",
            image_size: int = 0, parallelism: str = "jit", num_devices: int = 0,
            total_steps: int = 12, scan_blocks: bool = False, remat_blocks: bool = False,
            steps_per_dispatch: int = 1, data_on_device: bool = False,
            cpu_fusion: str | None = None):
  """(trainer, placed state, step function, its arguments after the state): the exact call the
  training loop makes, on synthetic data. Shared by `run_benchmark` and benchmarks/step_profile.py,
  so a profile times the step that `bench` times."""
  config = default_config()
  config.update(model=model, batch_size=batch_size, dtype=dtype, dataset="synthetic",
                image_size=image_size, parallelism=parallelism, num_devices=num_devices,
                total_steps=total_steps, lr_decay_steps=(), scan_blocks=scan_blocks,
                remat_blocks=remat_blocks, steps_per_dispatch=steps_per_dispatch,
                data_on_device=data_on_device, log_every_steps=steps_per_dispatch,
                eval_every_steps=0, checkpoint_every_steps=0,
                # On-device batches are drawn and augmented inside the step: time the paper's crop.
                augment="cifar" if data_on_device else "none")
  if cpu_fusion is not None:
    config.cpu_fusion = cpu_fusion
  trainer = Trainer(config)
  state = trainer.strategy.put_state(trainer.init_state())
  fn, args = trainer.dispatch_call(0, steps_per_dispatch)
  return trainer, state, fn, args


def _time(fn, state, args, k: int, warmup_steps: int, steps: int):
  """Compiles `fn` (timed), runs `warmup_steps` dispatches, then times `steps`: seconds per step."""
  t0 = time.perf_counter()
  compiled = fn.lower(state, *args).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup_steps):
    state, metrics = compiled(state, *args)
  jax.block_until_ready(state)
  times, _, metrics = time_calls(compiled, state, args, steps, k)
  return compiled, compile_s, times, metrics


def time_calls(fn, state, args, steps: int, k: int = 1):
  """`steps` calls of `fn(state, *args) -> (state, metrics)`, the state threaded through, each timed
  until its metrics are ready: (seconds per step of each call, the last state, its metrics). Every
  step timer here and in benchmarks/ times this way."""
  times, metrics = [], None
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = fn(state, *args)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - t) / k)
  return times, state, metrics


def _memory(compiled) -> dict:
  """The compiled step's memory per device in MiB, if XLA reports it."""
  m = memory.step_memory(compiled)
  if m is None:
    return {}
  return {"memory_temp_mb": m["temp"] / 2**20, "memory_args_mb": m["args"] / 2**20,
          "memory_peak_mb": m["peak"] / 2**20}
