"""N sweep members vectorised (one vmapped step) vs the same N one after another: member-steps/s.

  python benchmarks/vectorized.py                              # resnet8, resnet20; 4 members; CPU
  python benchmarks/vectorized.py --models resnet20 resnet56 --members 8    # an accelerator
  python benchmarks/vectorized.py --smoke                      # tiny sizes: checks the script

For each net it compiles the solo train step (what `resnet-jax sweep` runs for each member in turn)
and the vectorised step of `--members` members (resnet_jax.training.group_step; their learning
rates and data differ), on synthetic 32x32 data at batch 128, and times them in alternating rounds so that a
noisy machine slows both alike. Sequential throughput is 1 / (solo step time) member-steps per
second; vectorised is M / (group step time). Prints a markdown table, then one JSON line with every
figure (memory from XLA's analysis of each compiled step).
"""

import argparse
import json
import statistics
import sys
import time

import jax

from resnet_jax.bench import step as bench_step
from resnet_jax.config import default_config
from resnet_jax.training import memory
from resnet_jax.training.trainer import Trainer


def _config(model: str, batch_size: int, members: int):
  c = default_config()
  c.update(model=model, dataset="synthetic", batch_size=batch_size, total_steps=1000,
           lr_decay_steps=(), num_devices=1)
  configs = []
  for i in range(members):
    m = c.copy_and_resolve_references()
    m.update(seed=i, learning_rate=0.05 * (1 + i % 4))
    configs.append(m)
  return c, configs


def _time(fn, args, steps: int) -> float:
  """Median seconds of one call over `steps` calls; the state (first arg) is threaded through."""
  times, state, _ = bench_step.time_calls(fn, args[0], args[1:], steps)
  return statistics.median(times), state


def _memory_mb(compiled) -> float | None:
  m = memory.step_memory(compiled)
  return None if m is None else m["peak"] / 2**20


def measure(model: str, members: int, batch_size: int, steps: int, rounds: int) -> dict:
  base, configs = _config(model, batch_size, members)
  trainer = Trainer(base)  # the solo run's own step, as `resnet-jax sweep` trains each member
  group = Trainer(base, members=configs)  # and the group's, as `--vectorize` trains them

  state = trainer.strategy.put_state(trainer.init_state())
  (batch,) = trainer.dispatch_call(0, 1)[1]
  solo_fn = trainer.strategy.train_step.lower(state, batch).compile()

  strategy = group.strategy
  states = strategy.put_state(strategy.stack([group.init_state(c.seed) for c in configs]))
  batches, hparams = strategy.put_batch(group.batches(0)), strategy.hparams
  t0 = time.perf_counter()
  group_fn = strategy.jitted_train_step.lower(states, batches, hparams).compile()
  compile_s = time.perf_counter() - t0

  _, state = _time(solo_fn, (state, batch), 2)  # warm-up
  _, states = _time(group_fn, (states, batches, hparams), 2)
  solo_s, group_s = [], []
  for _ in range(rounds):  # alternate, so that load on a shared machine hits both alike
    t, state = _time(solo_fn, (state, batch), steps)
    solo_s.append(t)
    t, states = _time(group_fn, (states, batches, hparams), steps)
    group_s.append(t)
  solo_t, group_t = statistics.median(solo_s), statistics.median(group_s)
  return {
      "model": model, "members": members, "batch_size": batch_size,
      "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
      "solo_step_ms": 1e3 * solo_t, "group_step_ms": 1e3 * group_t,
      "sequential_member_steps_per_sec": 1 / solo_t,
      "vectorized_member_steps_per_sec": members / group_t,
      "speedup": members * solo_t / group_t,
      "solo_memory_mb": _memory_mb(solo_fn), "group_memory_mb": _memory_mb(group_fn),
      "group_compile_s": compile_s, "steps": steps, "rounds": rounds,
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["resnet8", "resnet20"])
  parser.add_argument("--members", type=int, default=4)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
  parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median taken)")
  parser.add_argument("--smoke", action="store_true", help="resnet8, 2 members, batch 8, 1 step")
  args = parser.parse_args(argv)
  if args.smoke:
    args.models, args.members, args.batch_size, args.steps, args.rounds = ["resnet8"], 2, 8, 1, 1
  print("| net | members | batch | solo ms/step | group ms/step | sequential member-steps/s | "
        "vectorised member-steps/s | speed-up | memory solo / group MB |")
  print("|---|---|---|---|---|---|---|---|---|")
  results = []
  for model in args.models:
    r = measure(model, args.members, args.batch_size, args.steps, args.rounds)
    mem = (f"{r['solo_memory_mb']:.0f} / {r['group_memory_mb']:.0f}"
           if r["solo_memory_mb"] is not None else "-")
    print(f"| {model} | {r['members']} | {r['batch_size']} | {r['solo_step_ms']:.1f} | "
          f"{r['group_step_ms']:.1f} | {r['sequential_member_steps_per_sec']:.2f} | "
          f"{r['vectorized_member_steps_per_sec']:.2f} | {r['speedup']:.2f}x | {mem} |", flush=True)
    results.append(r)
  print(json.dumps({"results": results}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
