"""Tests this page's explanation of the mid-run dip: BN's running statistics lag the weights.

  python docs/results/cifar10_resnet20/bn_check.py RUN_DIR [--steps 1100,2200] [--batches 50]

For each kept checkpoint of RUN_DIR (a training run's --workdir; the run must have kept the steps
wanted, e.g. --config.keep_checkpoints=8), evaluates the whole test set twice: with the running
statistics the run saved, and after re-estimating them with the weights frozen: forward passes in
training mode over `--batches` augmented training batches the run never drew, at the run's own BN
momentum, so that the saved statistics weigh momentum**batches (0.9**50 = 0.5%) at the end. If the
dip comes from the statistics lagging the weights, the re-estimated accuracy has no dip; if it stays,
the weights themselves are worse there. Prints a markdown table (one row per checkpoint).
"""

import argparse
import os

import jax

from resnet_jax.run import metrics_log
from resnet_jax.training.trainer import restore

FIRST_UNSEEN_STEP = 10_000_000  # batch indices no run of this length draws: fresh augmented batches


def reestimate(trainer, state, num_batches: int):
  """`state` with BN running statistics re-estimated over `num_batches` training batches.

  The parameters are frozen: each batch only moves the running averages, as in training (same
  momentum, same ghost-batch groups), so after enough batches they describe these weights alone.
  """
  model, config = trainer.model, trainer.config

  @jax.jit
  def update(params, stats, images):
    _, mutated = model.apply({"params": params, "batch_stats": stats}, images, train=True,
                             mutable=["batch_stats"])
    return mutated["batch_stats"]

  stats = state.batch_stats
  for i in range(num_batches):
    batch = trainer.dataset.train_batch(config.seed, FIRST_UNSEEN_STEP + i, config.batch_size)
    stats = update(state.params, stats, batch["image"])
  return state.replace(batch_stats=stats)


def test_accuracy(trainer, state) -> float:
  (result,) = trainer.evaluate(trainer.strategy.put_state(state))
  return result["eval/accuracy"]


def logged_accuracy(run_dir: str) -> dict[int, float]:
  """Step -> test accuracy as the run logged it."""
  return {r["step"]: r["eval/accuracy"] for r in metrics_log.read_metrics(run_dir)
          if "eval/accuracy" in r}


def check(run_dir: str, steps: list[int], num_batches: int) -> list[dict]:
  logged = logged_accuracy(run_dir)
  out = []
  for step in steps:
    trainer, state = restore(run_dir, step, num_devices=1)
    out.append({"step": step, "logged": logged.get(step),
                "saved": test_accuracy(trainer, state),
                "reestimated": test_accuracy(trainer, reestimate(trainer, state, num_batches))})
  return out


def markdown(rows: list[dict], num_batches: int) -> str:
  lines = ["| step | test acc % (logged) | re-evaluated, saved BN statistics | "
           f"BN statistics re-estimated ({num_batches} batches) | change (points) |",
           "|---|---|---|---|---|"]
  for r in rows:
    logged = "-" if r["logged"] is None else f"{100 * r['logged']:.2f}"
    lines.append(f"| {r['step']:,} | {logged} | {100 * r['saved']:.2f} | "
                 f"{100 * r['reestimated']:.2f} | {100 * (r['reestimated'] - r['saved']):+.2f} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run_dir", help="a training run's --workdir")
  parser.add_argument("--steps", default="",
                      help="comma-separated checkpoint steps (default: every one kept)")
  parser.add_argument("--batches", type=int, default=50, help="training batches to re-estimate over")
  args = parser.parse_args(argv)
  if args.steps:
    steps = [int(s) for s in args.steps.split(",")]
  else:
    folder = os.path.join(args.run_dir, "checkpoints")
    steps = sorted(int(name) for name in os.listdir(folder) if name.isdigit())
  print(markdown(check(args.run_dir, steps, args.batches), args.batches))


if __name__ == "__main__":
  main()
