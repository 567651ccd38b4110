"""The `resnet-jax` command line: every command's arguments, help and exit codes, in one table.

The command reference (docs/guides/commands.md) holds each command's `--help` output verbatim at 100
columns (tests/test_docs.py keeps them equal, with COLUMNS=100), so what is written here is what users
read in both places. Help is wrapped to the terminal's width (argparse asks it, or COLUMNS), at most
`WIDTH`.
"""

import argparse
import shutil

from resnet_jax import __version__

# The widest help is wrapped: past ~100 columns lines get hard to follow (Click caps its help at 80
# for the same reason); a narrower terminal gets help wrapped to its own width.
WIDTH = 100

OVERRIDES = ("config keys: --config.KEY=VALUE sets any key listed in resnet_jax/config/defaults.py "
             "(repeat it; an unknown key or a value of the wrong type is an error naming the key). "
             "--config FILE:ARG calls the file's get_config(ARG), e.g. configs/cifar10.py:resnet56.")
STOPPING = ("SIGTERM or a first Ctrl-C finishes the step, saves a checkpoint and exits 75 (re-run the "
            "same command to resume); a second Ctrl-C stops at once (130).")
BUG = "1 an unexpected error (a bug: printed with its traceback)"
EXIT = {  # command -> its exit codes
    "models": f"0 done; 2 an unknown model name; {BUG}.",
    "train": ("0 finished (or already finished); 1 a non-finite loss or gradient (earlier checkpoints "
              f"kept), or {BUG[2:]}; 2 bad input (config, workdir, data, a workdir in use, a missing "
              "extra); 74 the disk is full; 75 stopped early, checkpoint saved; 130 a second Ctrl-C."),
    "sweep": ("0 every member finished; 1 a member failed (its status.json says why; the others "
              f"ran), or {BUG[2:]}; 2 bad input; 74 the disk is full; 75 stopped early, checkpoints "
              "saved; 130 a second Ctrl-C."),
    "report": f"0 written; 2 no runs under the directory, or a missing extra; {BUG}.",
    "eval": f"0 evaluated; 2 not a run's workdir, no checkpoint yet, or bad data; {BUG}.",
    "convert": ("0 written; 2 bad input (unknown name, weights that are not that net, a workdir that "
                f"holds checkpoints, a download that fails its checksum); {BUG}."),
    "bench": f"0 timed; 2 bad input; {BUG}.",
    "prepare": (f"0 prepared (or already prepared); 2 a missing or corrupt file (named; nothing is "
                f"left behind); {BUG}."),
    "data-bench": f"0 timed; 2 bad input or data; {BUG}.",
    "compile": (f"0 the step fits the chip's memory; 1 it does not (or {BUG[2:]}); 2 bad input (an "
                "unknown topology: the known ones are listed; no libtpu or CUDA plugin: the extra to "
                "install)."),
}


class _Formatter(argparse.HelpFormatter):
  """argparse's formatter, at the terminal's width (at most WIDTH), keeping the paragraphs of a
  description or epilog (argparse's own joins them into one)."""

  def __init__(self, prog):
    super().__init__(prog, width=max(min(WIDTH, shutil.get_terminal_size().columns), 40),
                     max_help_position=30)

  def _fill_text(self, text, width, indent):
    return "\n\n".join(super(_Formatter, self)._fill_text(p, width, indent) for p in text.split("\n\n"))


def _epilog(command: str, *parts: str) -> str:
  return "\n\n".join([*parts, f"exit codes: {EXIT[command]}"])


def _add(sub, command: str, help_text: str, *epilog_parts: str):
  return sub.add_parser(command, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                        epilog=_epilog(command, *epilog_parts), formatter_class=_Formatter)


def build_parser(commands) -> argparse.ArgumentParser:
  """The parser; `commands` maps each command name to the function that runs it."""
  parser = argparse.ArgumentParser(
      prog="resnet-jax", formatter_class=_Formatter,
      description="Residual and plain networks (He et al. 2015) in JAX: train, sweep, report, evaluate, "
                  "convert torchvision weights, benchmark, compile for a TPU slice or GPU machine.",
      epilog="`resnet-jax COMMAND --help` describes each command, its options and exit codes.")
  parser.add_argument("--version", action="version", version=f"resnet-jax {__version__}")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for add in (_models, _train, _sweep, _report, _eval, _convert, _bench, _compile, _prepare,
              _data_bench):
    add(sub, commands)
  return parser


def _models(sub, commands):
  p = _add(sub, "models", "list the registered models with parameter and FLOP counts")
  p.add_argument("names", nargs="*", help="only these models (default: all)")
  p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
  p.set_defaults(func=commands["models"])


def _train(sub, commands):
  p = _add(sub, "train", "train a run, or resume it from its workdir", OVERRIDES, STOPPING,
           "The resolved config goes to WORKDIR/config.json, metrics to WORKDIR/metrics.jsonl and "
           "TensorBoard; the last line on stdout is the last metrics row as JSON.")
  _config_and_workdir(p, "config file, optionally with its argument, e.g. configs/quickstart.py",
                      "where checkpoints, metrics and config.json go (local or gs://)")
  p.set_defaults(func=commands["train"], overrides=[])


def _config_and_workdir(p, config_help: str, workdir_help: str):
  p.add_argument("--config", required=True, metavar="FILE[:ARG]", help=config_help)
  p.add_argument("--workdir", required=True, help=workdir_help)


def _sweep(sub, commands):
  p = _add(sub, "sweep", "train every member of a sweep file, then write the report",
           OVERRIDES + " An override applies to every member; one of a key the grid sets is an "
           "error.", "Finished members are skipped, unfinished ones resume from their checkpoints. "
           + STOPPING)
  _config_and_workdir(p, "a sweep file, e.g. configs/sweeps/degradation_digits.py",
                      "one folder per member, plus summary.* and plots")
  p.add_argument("--shard", default="0/1", metavar="I/N",
                 help="run members I, I+N, ... (split a sweep across machines)")
  p.add_argument("--no-plots", action="store_true", help="write only summary.csv and summary.md")
  p.add_argument("--vectorize", action="store_true",
                 help="train members that differ only in seed, learning_rate, weight_decay, momentum or "
                      "label_smoothing together, one vmapped step per group")
  p.set_defaults(func=commands["sweep"], overrides=[])


def _report(sub, commands):
  p = _add(sub, "report", "write summary.csv, summary.md and the plots for the runs under a folder")
  p.add_argument("workdir", metavar="DIR", help="a sweep's workdir, or one run's")
  p.add_argument("--no-plots", action="store_true", help="write only summary.csv and summary.md")
  p.set_defaults(func=commands["report"])


def _eval(sub, commands):
  p = _add(sub, "eval", "evaluate a run's newest checkpoint on its test (or validation) split",
           "Prints one JSON line: step, eval/loss, eval/accuracy.")
  p.add_argument("--workdir", required=True,
                 help="a run's workdir (a `train` or `convert` one), read under the config it holds")
  p.set_defaults(func=commands["eval"])


def _convert(sub, commands):
  p = _add(sub, "convert", "turn torchvision's ResNet weights into a run's workdir", OVERRIDES,
           "SOURCE: a .pth, .safetensors or .npz file, a URL, or a torchvision weights name (DEFAULT, "
           "IMAGENET1K_V1, IMAGENET1K_V2: downloaded once, checksum checked, cached in "
           "~/.cache/resnet_jax/weights). The workdir's config is --config (default "
           "configs/imagenet.py:NAME) with model=NAME, normalization=torchvision and the overrides. "
           "Then: resnet-jax eval --workdir DIR, or fine-tune with --config configs/finetune.py "
           "--config.init_from=DIR.")
  p.add_argument("--from", dest="source_format", required=True, choices=["torchvision"],
                 help="where the weights come from")
  p.add_argument("name", help="resnet18, resnet34, resnet50, resnet101 or resnet152")
  p.add_argument("source", nargs="?", default="DEFAULT", help="file, URL or weights name (DEFAULT)")
  p.add_argument("--workdir", required=True, help="a new folder: checkpoints/ and config.json")
  p.add_argument("--config", default="", metavar="FILE[:ARG]",
                 help="config file (default configs/imagenet.py:NAME)")
  p.add_argument("--cache-dir", default="", help="download cache (default ~/.cache/resnet_jax/weights)")
  p.set_defaults(func=commands["convert"], overrides=[])


def _bench(sub, commands):
  p = _add(sub, "bench", "time the compiled train step on synthetic data",
           "The step is the one training runs, compiled afresh (compile_s is a cold start's). Prints "
           "a summary, then one JSON line: step_ms_median, images_per_sec, compile_s, devices, "
           "flops_per_step, achieved_tflops and the step's memory from XLA.")
  p.add_argument("--model", default="resnet20", help="a name from `resnet-jax models`")
  p.add_argument("--batch-size", type=int, default=128, help="global batch")
  p.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                 help="compute dtype of the model (parameters stay float32)")
  p.add_argument("--image-size", type=int, default=0, help="0 = the model's default")
  p.add_argument("--parallelism", default="jit", choices=["jit", "pmap"],
                 help="jax.jit over a device mesh, or jax.pmap")
  p.add_argument("--num-devices", type=int, default=0, help="0 = all devices")
  p.add_argument("--scan-blocks", action="store_true", help="nn.scan over identical blocks")
  p.add_argument("--remat-blocks", action="store_true", help="rematerialise blocks in the backward pass")
  p.add_argument("--steps-per-dispatch", type=int, default=1, help="K steps per compiled call")
  p.add_argument("--cpu-fusion", default=None,
                 help="XLA:CPU YNNPACK fusions, e.g. eltwise (default: the config's; '' = XLA's)")
  p.add_argument("--data-on-device", action="store_true",
                 help="draw and augment (pad-crop-flip) each batch inside the compiled step")
  p.set_defaults(func=commands["bench"])


def _compile(sub, commands):
  p = _add(sub, "compile", "compile a run's exact step for a TPU slice or GPU machine, without one",
           OVERRIDES,
           "The trainer is built as the run would build it (model, optimizer, shardings, K steps per "
           "dispatch, on-device data, remat, scan, dtype) from the data's shapes alone, and the train "
           "and eval steps are compiled for the target's devices: by libtpu for a slice (pip install "
           "'resnet-jax[tpu]'), by the CUDA plugin from the GPU's published description for a GPU "
           "machine (pip install 'resnet-jax[gpu]'); no TPU or GPU needed. Names each phase as it "
           "goes, then prints per chip (per GPU): the memory needed against the chip's (a GPU's: the "
           "share JAX takes, XLA_PYTHON_CLIENT_MEM_FRACTION, default 75%), XLA's FLOPs against the "
           "counted ones, the collectives, a roofline estimate of step time and images/s from the "
           "published peaks (an estimate, not a measurement), the host cores that decoding needs, "
           "and the compile time; then one JSON line.")
  p.add_argument("--topology", required=True,
                 help="a Cloud TPU slice (v5e-8, v4-8, v5p-8, v6e-8, v4-16, v5e-16, ...) or its libtpu "
                      "topology (v5e:2x4); or GPUs: h100-N, h200-N, a100-40gb-N, a100-80gb-N (N = 1, "
                      "2, 4, 8; 16: two hosts), l4-N, or a machine type (a3-highgpu-8g, "
                      "a2-ultragpu-8g, g2-standard-48)")
  p.add_argument("--config", required=True, metavar="FILE[:ARG]",
                 help="the run's config file, e.g. configs/imagenet.py:resnet50")
  p.add_argument("--max-batch", action="store_true",
                 help="find the largest per-chip batch that fits (doubling, then bisection: one "
                      "compile each)")
  p.set_defaults(func=commands["compile"], overrides=[])


def _prepare(sub, commands):
  p = _add(sub, "prepare", "build a TFDS dataset from its original files, offline",
           "cifar10, cifar100: --source holds the official binary files (plain or .gz) or the official "
           "cifar-*-binary.tar.gz. imagenet2012 (and other manual downloads): --source is TFDS's "
           "manual_dir with ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar. Every file is checked "
           "before anything is built; a failed preparation leaves nothing behind.")
  p.add_argument("name", help="TFDS dataset name: cifar10, cifar100, imagenet2012, ...")
  p.add_argument("--source", required=True, help="folder (or archive) with the original files")
  p.add_argument("--data-dir", required=True, help="TFDS data_dir to build into (config.data_dir)")
  p.set_defaults(func=commands["prepare"])


def _data_bench(sub, commands):
  p = _add(sub, "data-bench",
           "time the input pipeline: images/s with augmentation, per thread or worker count",
           "Prints a line per thread or worker count, then one JSON line with every figure and the "
           "peak RSS.")
  p.add_argument("--data", required=True,
                 help="a TFDS name prepared in --data-dir, 'photos' (JPEGs cut from photographs) or "
                      "'fake-imagenet' (generated JPEGs)")
  p.add_argument("--data-dir", default="", help="TFDS data_dir (config.data_dir)")
  p.add_argument("--augment", default="", help="'' = cifar for 32x32 data, inception for ImageNet")
  p.add_argument("--batch-size", type=int, default=128, help="global batch")
  p.add_argument("--steps", type=int, default=20, help="timed batches per thread or worker count")
  p.add_argument("--threads", default="0,2", help="comma-separated data_threads to time")
  p.add_argument("--workers", default="", help="comma-separated data_workers (processes) to time")
  p.add_argument("--image-size", type=int, default=0, help="variable-size images: 0 = 224")
  p.set_defaults(func=commands["data-bench"])
