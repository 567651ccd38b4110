"""The `resnet-jax` command: parses arguments and calls library functions, nothing more."""

import argparse
import json
import sys


def _models(args) -> int:
  from resnet_jax import flops, models  # pylint: disable=g-import-not-at-top

  names = args.names or models.list_models()
  rows = []
  for name in names:
    size = models.default_image_size(name)
    stats = flops.profile(models.get_model(name), size)
    rows.append({"model": name, "image_size": size, **stats})
    if not args.json:
      if len(rows) == 1:
        print(f"{'model':<12}{'image':>7}{'params':>14}{'multiply-adds':>16}")
      print(f"{name:<12}{size:>7}{stats['params']:>14,}{stats['macs']:>16.3e}", flush=True)
  if args.json:
    print(json.dumps(rows))
  return 0


def _split_overrides(extra: list[str]) -> dict[str, str]:
  """`--config.key=value` (or `--config.key value`) pairs left over by argparse."""
  overrides, i = {}, 0
  while i < len(extra):
    arg = extra[i]
    if not arg.startswith("--config."):
      raise ValueError(f"unrecognised argument {arg!r}; config keys are set as --config.<key>=<value>.")
    key, eq, value = arg[len("--config."):].partition("=")
    if not eq:
      if i + 1 >= len(extra):
        raise ValueError(f"{arg} needs a value: {arg}=<value>.")
      value, i = extra[i + 1], i + 1
    overrides[key] = value
    i += 1
  return overrides


def _train(args) -> int:
  from resnet_jax import configuration, train  # pylint: disable=g-import-not-at-top

  config = configuration.load(args.config, _split_overrides(args.overrides))
  try:
    last = train.train_and_evaluate(config, args.workdir)
  except train.StoppedEarly as e:
    print(f"resnet-jax train: {e}", file=sys.stderr)
    return train.EXIT_STOPPED_EARLY
  except train.NonFiniteError as e:
    print(f"resnet-jax train: error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(last))
  return 0


def _eval(args) -> int:
  from resnet_jax import train  # pylint: disable=g-import-not-at-top

  print(json.dumps(train.evaluate_checkpoint(args.workdir)))
  return 0


def _bench(args) -> int:
  from resnet_jax import bench  # pylint: disable=g-import-not-at-top

  result = bench.run_benchmark(model=args.model, batch_size=args.batch_size, steps=args.steps,
                               dtype=args.dtype, image_size=args.image_size,
                               parallelism=args.parallelism, num_devices=args.num_devices)
  print(f"{result['model']} batch {result['batch_size']} {result['dtype']} on {result['devices']} "
        f"{result['backend']} device(s): {result['step_ms_median']:.1f} ms/step, "
        f"{result['images_per_sec']:.0f} images/s, compile {result['compile_s']:.1f} s",
        file=sys.stderr)
  print(json.dumps(result))  # last line: machine-readable
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="resnet-jax", description="Residual and plain networks (He et al. 2015) in JAX.")
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("models", help="list the registered models with parameter and FLOP counts")
  p.add_argument("names", nargs="*", help="only these models (default: all)")
  p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
  p.set_defaults(func=_models)

  p = sub.add_parser("train", help="train (or resume) a run; every config key can be overridden",
                     epilog="Overrides: --config.<key>=<value>, keys as in configs/default.py. "
                            "Exit codes: 0 done, 1 non-finite loss, 2 bad input, 75 stopped early by "
                            "SIGTERM after saving (re-run to resume).")
  p.add_argument("--config", required=True, help="config file, optionally with an argument: FILE[:ARG]")
  p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard, config.json")
  p.set_defaults(func=_train, overrides=[])

  p = sub.add_parser("eval", help="evaluate the newest checkpoint of a run on its test split")
  p.add_argument("--workdir", required=True)
  p.set_defaults(func=_eval)

  p = sub.add_parser("bench", help="time the compiled train step on synthetic data")
  p.add_argument("--model", default="resnet20")
  p.add_argument("--batch-size", type=int, default=128, help="global batch")
  p.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
  p.add_argument("--image-size", type=int, default=0, help="0 = the model's default")
  p.add_argument("--parallelism", default="jit", choices=["jit", "pmap"])
  p.add_argument("--num-devices", type=int, default=0, help="0 = all devices")
  p.set_defaults(func=_bench)
  return parser


def main(argv=None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if extra and args.command != "train":
    parser.error(f"unrecognised arguments: {' '.join(extra)}")
  args.overrides = extra
  try:
    return args.func(args)
  except ValueError as e:  # bad input from the user: say what and how to fix it, no traceback
    print(f"resnet-jax {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
