"""The `resnet-jax` command: parses arguments and calls library functions, nothing more."""

import argparse
import json
import os
import sys

from resnet_jax import runtime
from resnet_jax.training import errors

# The extra (pyproject.toml) that installs each optional top-level module: `pip install resnet-jax`
# alone has jax, flax and numpy, enough for `resnet-jax models` and for using the models in code.
EXTRAS = {
    "optax": "train", "orbax": "train", "ml_collections": "train", "etils": "train", "chex": "train",
    "sklearn": "train", "grain": "train", "array_record": "train",
    "tensorflow_datasets": "train", "PIL": "train", "importlib_resources": "train",
    "matplotlib": "report", "tensorflow": "data", "torch": "torch", "safetensors": "torch",
}


def _models(args) -> int:
  from resnet_jax import models  # pylint: disable=g-import-not-at-top
  from resnet_jax.models import flops  # pylint: disable=g-import-not-at-top

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


def split_overrides(extra: list[str]) -> dict[str, str]:
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
  from resnet_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import distributed, loop  # pylint: disable=g-import-not-at-top

  distributed.initialize()  # before anything touches a device
  config = config_lib.load(args.config, split_overrides(args.overrides))
  runtime.enable_compilation_cache(config.compilation_cache_dir)
  last = loop.train_and_evaluate(config, args.workdir)
  if distributed.is_lead():
    print(json.dumps(last))
  return 0


def _eval(args) -> int:
  from resnet_jax.training import distributed, loop  # pylint: disable=g-import-not-at-top

  distributed.initialize()
  runtime.enable_compilation_cache()
  result = loop.evaluate_checkpoint(args.workdir)
  if distributed.is_lead():
    print(json.dumps(result))
  return 0


def _sweep(args) -> int:
  from resnet_jax.experiments import report, sweep  # pylint: disable=g-import-not-at-top

  overrides = split_overrides(args.overrides)
  # The sweep file's own choice of cache (its members share every key but the grid's).
  runtime.enable_compilation_cache(sweep.load_members(args.config, overrides)[0].config.compilation_cache_dir)
  results = sweep.run_sweep(args.config, args.workdir, args.shard, overrides, vectorize=args.vectorize)
  failed = sorted(name for name, status in results.items() if status == "failed")
  if failed and len(failed) == len(results):
    print(f"resnet-jax sweep: every run failed: {', '.join(failed)} (see <run>/status.json); no "
          "report.", file=sys.stderr)
    return 1
  report.write_report(args.workdir, plots=not args.no_plots, responses=not args.no_plots)
  print(_read_text(f"{args.workdir}/summary.md"))
  if failed:
    print(f"resnet-jax sweep: {len(failed)} run(s) failed: {', '.join(failed)} "
          "(see <run>/status.json); re-run to retry them.", file=sys.stderr)
    return 1
  return 0


def _report(args) -> int:
  from resnet_jax.experiments import report  # pylint: disable=g-import-not-at-top

  report.write_report(args.workdir, plots=not args.no_plots, responses=not args.no_plots)
  print(_read_text(f"{args.workdir}/summary.md"))
  return 0


def _read_text(path: str) -> str:
  from etils import epath  # pylint: disable=g-import-not-at-top  # a bucket path too

  return epath.Path(path).read_text()


def _bench(args) -> int:
  from resnet_jax import bench  # pylint: disable=g-import-not-at-top

  result = bench.run_benchmark(model=args.model, batch_size=args.batch_size, steps=args.steps,
                               dtype=args.dtype, image_size=args.image_size,
                               parallelism=args.parallelism, num_devices=args.num_devices,
                               scan_blocks=args.scan_blocks, remat_blocks=args.remat_blocks,
                               steps_per_dispatch=args.steps_per_dispatch,
                               data_on_device=args.data_on_device, cpu_fusion=args.cpu_fusion)
  print(f"{result['model']} batch {result['batch_size']} {result['dtype']} on {result['devices']} "
        f"{result['backend']} device(s): {result['step_ms_median']:.1f} ms/step, "
        f"{result['images_per_sec']:.0f} images/s, compile {result['compile_s']:.1f} s",
        file=sys.stderr)
  print(json.dumps(result))  # last line: machine-readable
  return 0


def _convert(args) -> int:
  from resnet_jax import pretrained  # pylint: disable=g-import-not-at-top
  from resnet_jax.pretrained import workdir  # pylint: disable=g-import-not-at-top

  config = workdir.conversion_config(args.name, args.config, split_overrides(args.overrides))
  variables = pretrained.load_torchvision(args.name, args.source, cache=args.cache_dir or None)
  print(json.dumps(workdir.write(args.workdir, config, variables)))
  return 0


def _prepare(args) -> int:
  from resnet_jax.data import prepare  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import console  # pylint: disable=g-import-not-at-top

  sizes = prepare.prepare(args.name, args.source, args.data_dir, log=console.Console().say)
  print(json.dumps({"dataset": args.name, "data_dir": args.data_dir,
                    "splits": {str(k): v for k, v in sizes.items()}}))
  return 0


def _data_bench(args) -> int:
  from resnet_jax.bench import data as data_bench  # pylint: disable=g-import-not-at-top

  r = data_bench.run_data_bench(args.data, args.data_dir, args.augment, args.batch_size, args.steps,
                                tuple(int(t) for t in args.threads.split(",") if t), args.image_size)
  for row in r["rows"]:
    print(f"{r['data']} ({r['augment']}, batch {r['batch_size']}, {r['image_shape']}): "
          f"{row['threads']} threads {row['images_per_sec']:.0f} images/s", file=sys.stderr)
  print(f"peak RSS {r['peak_rss_mib']:.0f} MiB on {r['cpu_cores']} cores", file=sys.stderr)
  print(json.dumps(r))  # last line: machine-readable
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
                     epilog="Overrides: --config.<key>=<value>, keys as in resnet_jax/config/defaults.py. "
                            "Exit codes: 0 done, 1 non-finite loss, 2 bad input (config, workdir, "
                            "data; also a workdir in use), 74 disk full, 75 stopped early by SIGTERM "
                            "or Ctrl-C after saving (re-run to resume), 130 a second Ctrl-C.")
  p.add_argument("--config", required=True, help="config file, optionally with an argument: FILE[:ARG]")
  p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard, config.json")
  p.set_defaults(func=_train, overrides=[])

  p = sub.add_parser("sweep", help="run every member of a sweep file, then write the report",
                     epilog="Finished members are skipped, unfinished ones resume. Exit codes: 0 all "
                            "done, 1 some member failed, 2 bad input, 75 stopped early by SIGTERM.")
  p.add_argument("--config", required=True, help="a sweep file, e.g. configs/sweeps/degradation_digits.py")
  p.add_argument("--workdir", required=True, help="one sub-directory per run, plus summary.* and plots")
  p.add_argument("--shard", default="0/1", help="i/n: run members i, i+n, ... (split across machines)")
  p.add_argument("--no-plots", action="store_true", help="write only summary.csv and summary.md")
  p.add_argument("--vectorize", action="store_true",
                 help="train members that differ only in seed, learning_rate, weight_decay, momentum "
                      "or label_smoothing together, one vmapped step per group (config key: vectorize)")
  p.set_defaults(func=_sweep, overrides=[])

  p = sub.add_parser("report", help="summary.csv, summary.md and plots for the runs under a directory")
  p.add_argument("workdir", help="a sweep directory (or one run's workdir)")
  p.add_argument("--no-plots", action="store_true", help="write only summary.csv and summary.md")
  p.set_defaults(func=_report)

  p = sub.add_parser("eval", help="evaluate the newest checkpoint of a run on its test split")
  p.add_argument("--workdir", required=True)
  p.set_defaults(func=_eval)

  p = sub.add_parser(
      "convert", help="torchvision ResNet weights -> a workdir (checkpoint + config.json)",
      epilog="SOURCE: a .pth/.safetensors/.npz file, a URL, or torchvision's weights name (DEFAULT, "
             "IMAGENET1K_V1, IMAGENET1K_V2: downloaded once, checksum checked, cached in "
             "~/.cache/resnet_jax/weights). The workdir's config is --config (default "
             "configs/imagenet.py:NAME) with model=NAME, normalization=torchvision and the "
             "--config.KEY=VALUE overrides. Then: resnet-jax eval --workdir DIR, or fine-tune with "
             "--config configs/finetune.py --config.init_from=DIR.")
  p.add_argument("--from", dest="source_format", required=True, choices=["torchvision"],
                 help="where the weights come from")
  p.add_argument("name", help="resnet18, resnet34, resnet50, resnet101 or resnet152")
  p.add_argument("source", nargs="?", default="DEFAULT", help="file, URL or weights name (DEFAULT)")
  p.add_argument("--workdir", required=True, help="a new directory: checkpoints/ and config.json")
  p.add_argument("--config", default="", help="config file[:ARG] (default configs/imagenet.py:NAME)")
  p.add_argument("--cache-dir", default="", help="download cache (default ~/.cache/resnet_jax/weights)")
  p.set_defaults(func=_convert, overrides=[])

  p = sub.add_parser("bench", help="time the compiled train step on synthetic data")
  p.add_argument("--model", default="resnet20")
  p.add_argument("--batch-size", type=int, default=128, help="global batch")
  p.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
  p.add_argument("--image-size", type=int, default=0, help="0 = the model's default")
  p.add_argument("--parallelism", default="jit", choices=["jit", "pmap"])
  p.add_argument("--num-devices", type=int, default=0, help="0 = all devices")
  p.add_argument("--scan-blocks", action="store_true", help="nn.scan over identical blocks")
  p.add_argument("--remat-blocks", action="store_true", help="rematerialise blocks in the backward pass")
  p.add_argument("--steps-per-dispatch", type=int, default=1, help="K steps per compiled call")
  p.add_argument("--cpu-fusion", default=None,
                 help="XLA:CPU YNNPACK fusions, e.g. eltwise (default: the config default; '' = XLA's)")
  p.add_argument("--data-on-device", action="store_true",
                 help="draw and augment (pad-crop-flip) each batch inside the compiled step")
  p.set_defaults(func=_bench)

  p = sub.add_parser("prepare", help="build a TFDS dataset from its original files, offline",
                     epilog="cifar10/cifar100: --source holds the official binary files (plain or .gz) "
                            "or the official cifar-*-binary.tar.gz. imagenet2012 (and other manual "
                            "downloads): --source is TFDS's manual_dir with ILSVRC2012_img_train.tar "
                            "and ILSVRC2012_img_val.tar.")
  p.add_argument("name", help="TFDS dataset name: cifar10, cifar100, imagenet2012, ...")
  p.add_argument("--source", required=True, help="folder (or archive) with the original files")
  p.add_argument("--data-dir", required=True, help="TFDS data_dir to build into (config.data_dir)")
  p.set_defaults(func=_prepare)

  p = sub.add_parser("data-bench", help="images/s of the input pipeline with augmentation")
  p.add_argument("--data", required=True,
                 help="a TFDS name prepared in --data-dir, or 'fake-imagenet' (generated JPEGs)")
  p.add_argument("--data-dir", default="", help="TFDS data_dir (config.data_dir)")
  p.add_argument("--augment", default="", help="'' = cifar for 32x32 data, inception for ImageNet")
  p.add_argument("--batch-size", type=int, default=128, help="global batch")
  p.add_argument("--steps", type=int, default=20, help="timed batches per thread count")
  p.add_argument("--threads", default="0,2", help="comma-separated data_threads to time")
  p.add_argument("--image-size", type=int, default=0, help="variable-size images: 0 = 224")
  p.set_defaults(func=_data_bench)
  return parser


def main(argv=None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if extra and args.command not in ("train", "sweep", "convert"):
    parser.error(f"unrecognised arguments: {' '.join(extra)}")
  args.overrides = extra
  try:
    return args.func(args)
  except ModuleNotFoundError as e:  # a light install running a command that needs an extra
    module = (e.name or "").split(".")[0]
    if module not in EXTRAS:
      raise
    print(f"resnet-jax {args.command}: error: this command needs the {module!r} package, which the "
          f"light install leaves out: pip install 'resnet-jax[{EXTRAS[module]}]'", file=sys.stderr)
    return errors.EXIT_BAD_INPUT
  except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except
    code = errors.exit_code(e)
    if code is None:
      raise  # not an error a user can fix: a bug, with its traceback
    if isinstance(e, KeyboardInterrupt):
      message = ("stopped at once by a second Ctrl-C; nothing was saved after the last checkpoint, "
                 "from which the same command resumes.")
    elif isinstance(e, errors.StoppedEarly):
      message = str(e)
    else:
      message = f"error: {e}"
    print(f"resnet-jax {args.command}: {message}", file=sys.stderr)
    return code


def entry_point() -> int:
  """The installed `resnet-jax` command: `main` with huge pages where they apply (see above)."""
  env = runtime.hugepage_environment(os.environ)
  if env is not None and sys.executable:
    os.execve(sys.executable, [sys.executable, "-m", "resnet_jax.cli", *sys.argv[1:]], env)
  return main()


if __name__ == "__main__":
  sys.exit(entry_point())
