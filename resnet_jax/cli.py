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


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="resnet-jax", description="Residual and plain networks (He et al. 2015) in JAX.")
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("models", help="list the registered models with parameter and FLOP counts")
  p.add_argument("names", nargs="*", help="only these models (default: all)")
  p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
  p.set_defaults(func=_models)
  return parser


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return args.func(args)
  except ValueError as e:  # bad input from the user: say what and how to fix it, no traceback
    print(f"resnet-jax {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
