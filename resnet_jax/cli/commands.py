"""What each `resnet-jax` command does: parsed arguments in, library calls, results out."""

import json
import os
import sys

from resnet_jax.cli import compile_report
from resnet_jax.run import errors, extras, process


def _models(args) -> int:
  from resnet_jax import models  # pylint: disable=g-import-not-at-top
  from resnet_jax.models import flops  # pylint: disable=g-import-not-at-top

  names = args.names or models.list_models()
  unknown = [n for n in names if n not in models.list_models()]
  if unknown:
    raise errors.ConfigError(f"unknown model {unknown[0]!r}; valid names: "
                             f"{', '.join(models.list_models())}.")
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
      raise errors.ConfigError(f"unrecognised argument {arg!r}; config keys are set as "
                               "--config.<key>=<value>.")
    key, eq, value = arg[len("--config."):].partition("=")
    if not eq:
      if i + 1 >= len(extra):
        raise errors.ConfigError(f"{arg} needs a value: {arg}=<value>.")
      value, i = extra[i + 1], i + 1
    overrides[key] = value
    i += 1
  return overrides


def _train(args) -> int:
  from resnet_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.run import distributed  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import loop  # pylint: disable=g-import-not-at-top

  distributed.initialize()  # before anything touches a device
  config = config_lib.load(args.config, split_overrides(args.overrides))
  process.enable_compilation_cache(config.compilation_cache_dir)
  last = loop.train_and_evaluate(config, args.workdir)
  if distributed.is_lead():
    print(json.dumps(last))
  return 0


def _eval(args) -> int:
  from resnet_jax.run import distributed  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import loop  # pylint: disable=g-import-not-at-top

  distributed.initialize()
  process.enable_compilation_cache()
  result = loop.evaluate_checkpoint(args.workdir)
  if distributed.is_lead():
    print(json.dumps(result))
  return 0


def _sweep(args) -> int:
  from resnet_jax.experiments import report, sweep  # pylint: disable=g-import-not-at-top

  overrides = split_overrides(args.overrides)
  # The sweep file's own choice of cache (its members share every key but the grid's).
  process.enable_compilation_cache(
      sweep.load_members(args.config, overrides)[0].config.compilation_cache_dir)
  results = sweep.run_sweep(args.config, args.workdir, args.shard, overrides, vectorize=args.vectorize)
  failed = sorted(name for name, status in results.items() if status == "failed")
  if failed and len(failed) == len(results):
    first = sweep.read_status(f"{args.workdir}/{failed[0]}").get("error", "")
    print(f"resnet-jax sweep: every member failed, so no report was written; the first error "
          f"({failed[0]}): {first} (each one is in <run>/status.json)", file=sys.stderr)
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
  from resnet_jax.run import storage  # pylint: disable=g-import-not-at-top  # a bucket path too

  return storage.read_text(path)


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
  from resnet_jax.pretrained import convert  # pylint: disable=g-import-not-at-top

  config = convert.conversion_config(args.name, args.config, split_overrides(args.overrides))
  process.enable_compilation_cache(config.compilation_cache_dir)
  variables = pretrained.load_torchvision(args.name, args.source, cache=args.cache_dir or None)
  print(json.dumps(convert.write(args.workdir, config, variables)))
  return 0


def _prepare(args) -> int:
  from resnet_jax.data import prepare  # pylint: disable=g-import-not-at-top
  from resnet_jax.run import console  # pylint: disable=g-import-not-at-top

  sizes = prepare.prepare(args.name, args.source, args.data_dir, log=console.Console().say)
  print(json.dumps({"dataset": args.name, "data_dir": args.data_dir,
                    "splits": {str(k): v for k, v in sizes.items()}}))
  return 0


def _data_bench(args) -> int:
  from resnet_jax.bench import data as data_bench  # pylint: disable=g-import-not-at-top

  r = data_bench.run_data_bench(args.data, args.data_dir, args.augment, args.batch_size, args.steps,
                                tuple(int(t) for t in args.threads.split(",") if t), args.image_size,
                                workers=tuple(int(w) for w in args.workers.split(",") if w))
  for row in r["rows"]:
    how = f"{row['workers']} worker processes" if row["workers"] else f"{row['threads']} threads"
    print(f"{r['data']} ({r['augment']}, batch {r['batch_size']}, {r['image_shape']}): "
          f"{how} {row['images_per_sec']:.0f} images/s", file=sys.stderr)
  print(f"peak RSS {r['peak_rss_mib']:.0f} MiB on {r['cpu_cores']} cores", file=sys.stderr)
  print(json.dumps(r))  # last line: machine-readable
  return 0


def needs(args) -> tuple[str, ...]:
  """Every module the whole of this command needs: checked before it starts, so a sweep learns in
  its first second, not after training, that its report needs matplotlib."""
  command = args.command
  if command == "models":
    return ()
  modules = extras.TRAIN
  if command in ("sweep", "report") and not args.no_plots:
    modules += ("matplotlib",)
  if command == "prepare":
    modules += ("tensorflow",)
  if command == "compile":
    from resnet_jax.targets import gpu  # pylint: disable=g-import-not-at-top  # tables only, no jax

    modules += ("jax_cuda12_plugin",) if gpu.find(args.topology) else ("libtpu",)
  if "://" in str(getattr(args, "workdir", "") or ""):  # gs:// goes through gcsfs (run/storage.py)
    modules += ("gcsfs",)
  if command == "convert":
    source = str(args.source)
    if source.endswith(".safetensors"):
      modules += ("safetensors",)
    elif not source.endswith(".npz"):  # .pth files, URLs and weights names: torchvision's .pth
      modules += ("torch",)
  return modules


def _compile(args) -> int:
  from resnet_jax.targets import chips, gpu  # pylint: disable=g-import-not-at-top  # no jax yet

  slice_, machine = chips.find(args.topology), gpu.find(args.topology)
  if machine is not None:
    # The CUDA plugin compiles from the GPU's description; the switches that let it do so on a host
    # without a GPU or driver, before JAX is imported (resnet_jax.targets.gpu.GPU_ENVIRONMENT).
    os.environ.update(gpu.environment(os.environ))
  else:
    # libtpu compiles for the slice from its description alone; the host's own TPU backend (none
    # here, or a TPU VM's chips, busy with a run) is not needed, and probing for it only prints
    # warnings.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # Nor does it claim the host's chips, so it skips libtpu's one-process lock
    # (/tmp/libtpu_lockfile): a compile beside a running job, or two at once, would fail on it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if slice_ is not None:  # an unknown name is refused, with the known ones, by compile_for
    os.environ.update(process.libtpu_host_defaults(os.environ, slice_.cloud_name))
  from resnet_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.run import console  # pylint: disable=g-import-not-at-top
  from resnet_jax.targets import compile as target  # pylint: disable=g-import-not-at-top
  from resnet_jax.targets import max_batch  # pylint: disable=g-import-not-at-top

  config = config_lib.load(args.config, split_overrides(args.overrides))
  say = console.Console().say
  found = slice_ or machine
  if found is not None:  # what is compiled, for where: first, before minutes of compiling
    say(f"compiling {config.model} ({config.dtype}, batch {config.batch_size}) for {found.name} "
        f"({found.cloud_name}: {compile_report.describe_where(found)})" + (", searching the largest batch per chip"
                                                           if args.max_batch else ""))
  if args.max_batch:
    batch, result = max_batch.max_batch(config, args.topology, say=say)
    result["max_batch_per_chip"] = batch
    say(f"largest batch per chip that fits: {batch}")
  else:
    result = target.compile_for(config, args.topology, say=say)
  print(compile_report.describe_compile(result), file=sys.stderr, flush=True)
  print(json.dumps(result))  # last line: machine-readable
  return 0 if result["hbm"]["fits"] else 1


COMMANDS = {"models": _models, "compile": _compile, "train": _train, "sweep": _sweep, "report": _report, "eval": _eval,
            "convert": _convert, "bench": _bench, "prepare": _prepare, "data-bench": _data_bench}
