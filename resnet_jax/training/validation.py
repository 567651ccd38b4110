"""Every config key checked once, before anything is read, made or compiled.

`validate(config)` is the one place that says whether a config can run: each value on its own
(choices, ranges), and the values together (the schedule's boundaries against the run's length, the
batch against the devices and BN groups, the augmentation against the dataset, the cadences against
the steps per dispatch, fine-tuning keys against `init_from`). It knows the models (their registry)
and the datasets it can describe without opening them (`resnet_jax.data.spec`), which is why it
lives here and not in `config/`. Each error is a `ConfigError` that names the key and the fix; the
trainer, sweeps, conversions and benchmarks call it first, so an error never waits for the data. A
TFDS dataset the table does not list meets the same data rules as it opens, on the spec its
metadata gives (`metadata_check`); the data and model layers check none of these keys again.
"""

import functools
from typing import Callable, Optional

import jax
import ml_collections

from resnet_jax import models
from resnet_jax.data import augment as aug
from resnet_jax.models.layers import bn_group_problem
from resnet_jax.run.errors import ConfigError
from resnet_jax.training import derived, optim, profiling

CHOICES = {
    "dtype": ("float32", "bfloat16", "float16"),
    "eval_crops": aug.EVAL_CROPS,
    "color_augment": aug.COLOR_AUGMENTS,
    "augment": aug.AUGMENTS,
    "normalization": aug.NORMALIZATIONS,
    "shortcut": ("", "A", "B", "C"),
    "stride_placement": ("", *models.STRIDE_PLACEMENTS),  # "": the preset's own
    "lr_schedule": ("step", "cosine", "linear", "constant"),
    "warmup_mode": ("linear", "constant", "error"),
    "lr_scaling": ("none", "linear"),
    "momentum_style": ("optax", "caffe"),
    "weight_decay_mask": optim.WEIGHT_DECAY_MASKS,
    "parallelism": ("jit", "pmap"),
}
POSITIVE = ("batch_size", "eval_batch_size", "total_steps", "log_every_steps", "keep_checkpoints",
            "steps_per_dispatch", "normalization_examples", "synthetic_channels", "width_multiplier")
NON_NEGATIVE = ("eval_every_steps", "checkpoint_every_steps", "bn_group_size", "num_devices",
                "num_classes", "image_size", "label_smoothing", "vectorize_max_members",
                "validation_split", "data_threads", "data_workers", "prefetch_batches",
                "warmup_steps", "grad_clip_norm", "weight_decay", "momentum", "learning_rate",
                "warmup_learning_rate", "color_augment_std")
# XLA:CPU library fusions that `cpu_fusion` may name -> their DebugOptions.LibraryFusionType (jaxlib
# 0.10.2). "conv" hands each convolution to YNNPACK alone (XLA's INDIVIDUAL_CONVOLUTION): a resnet8
# train step compiled with it holds 107 YNNPACK fusions against 97 without (2026-12-03).
CPU_FUSIONS = {"dot": "DOT", "eltwise": "ELTWISE", "reduce": "REDUCE",
               "conv": "INDIVIDUAL_CONVOLUTION"}


def validate(config: ml_collections.ConfigDict, devices: list | None = None) -> None:
  """Raises ConfigError for the first key that cannot work; returns None when all can.

  `devices` are the devices the run may use (None: this machine's, `jax.devices()`); a compile for
  a TPU topology passes the topology's.
  """
  _values(config)
  _model(config)
  _data(config)
  _schedule(config)
  _cadence(config)
  _finetuning(config)
  _devices(config, devices)


def _fail(message: str):
  raise ConfigError(message)


def _values(config) -> None:
  for key, choices in CHOICES.items():
    if config[key] not in choices:
      _fail(f"{key}={config[key]!r} is not one of {list(choices)}.")
  for key in POSITIVE:
    if not config[key] > 0:
      _fail(f"{key}={config[key]} must be > 0.")
  for key in NON_NEGATIVE:
    if config[key] < 0:
      _fail(f"{key}={config[key]} must be >= 0.")
  if config.label_smoothing >= 1:
    _fail(f"label_smoothing={config.label_smoothing} must be < 1 (0 = none; 0.1 is usual).")
  if not 0 <= config.bn_momentum < 1:
    _fail(f"bn_momentum={config.bn_momentum} must be in [0, 1) (0.9 = torchvision's momentum=0.1).")
  names = [n.strip() for n in config.cpu_fusion.split(",") if n.strip()]
  unknown = sorted(set(names) - set(CPU_FUSIONS))
  if unknown:
    _fail(f"cpu_fusion={config.cpu_fusion!r}: unknown fusion {unknown}; use a comma-separated subset "
          f"of {list(CPU_FUSIONS)}, or \"\" for XLA's default.")


def _model(config) -> None:
  if config.model not in models.list_models():
    _fail(f"model={config.model!r} is not a registered model; `resnet-jax models` lists them: "
          f"{', '.join(models.list_models())}.")
  plain = config.model.startswith("plain") or config.model.startswith("vgg")
  if plain and config.shortcut:
    _fail(f"shortcut={config.shortcut!r}: {config.model} is a plain net, it has no shortcuts; set "
          "shortcut='' or use the resnet preset.")
  if config.zero_init_residual and plain:
    _fail(f"zero_init_residual=True needs residual branches; {config.model} has none.")
  if config.scan_blocks and config.model.startswith("vgg"):
    _fail("scan_blocks=True scans identical residual blocks; vgg19 has none. Set scan_blocks=False.")


def _data(config) -> None:
  if config.eval_crops == "multiscale" and (not config.eval_scales or min(config.eval_scales) < 1):
    _fail(f"eval_scales={config.eval_scales!r}: multiscale testing needs at least one positive side, "
          "e.g. (224, 256, 384, 480, 640).")
  spec = derived.data_spec(config)
  if spec is not None:  # else a TFDS dataset we do not know: checked as it opens (`metadata_check`)
    check_data(config, spec)


def metadata_check(config) -> Optional[Callable]:
  """What the data layer calls with the `DataSpec` it reads from a dataset's metadata, before any
  example: `check_data` for a dataset whose spec `validate` could not know, else None (checked)."""
  return None if derived.data_spec(config) is not None else functools.partial(check_data, config)


def check_data(config, spec) -> None:
  """The data keys of `config` against the dataset `spec` describes (`resnet_jax.data.DataSpec`)."""
  if config.color_augment == "pca":
    if spec.image_shape[-1] != 3:
      _fail(f"color_augment='pca' shifts RGB colours; {config.dataset} images have "
            f"{spec.image_shape[-1]} channel(s). Set color_augment='none'.")
    if spec.in_memory or config.data_on_device:
      _fail("color_augment='pca' runs in the host's TFDS pipeline (ImageNet's); set "
            "color_augment='none' for in-memory or on-device data.")
  if spec.fixed_size:
    if config.eval_crops != "center":
      _fail(f"eval_crops={config.eval_crops!r} crops variable-size images (ImageNet); "
            f"{config.dataset} images are {spec.image_shape[0]}x{spec.image_shape[1]} and are tested "
            "whole. Set eval_crops='center'.")
    if config.augment in ("inception", "scale"):
      _fail(f"augment={config.augment!r} crops variable-size images (ImageNet); {config.dataset} "
            "images are all one size: use 'cifar' (pad-crop-flip) or 'none'.")
    if config.image_size and not spec.in_memory and config.image_size != spec.image_shape[0]:
      _fail(f"image_size={config.image_size}, but {config.dataset} images are "
            f"{spec.image_shape[0]}x{spec.image_shape[1]}; set image_size=0.")
  elif config.augment == "cifar":
    _fail(f"augment='cifar' pads and crops fixed-size images; {config.dataset} images vary in size: "
          "use 'inception' or 'scale'.")
  if config.data_on_device and not spec.fixed_size:
    _fail(f"data_on_device=True holds the decoded training set on the devices; {config.dataset} "
          "images vary in size (and would not fit). Set data_on_device=False.")
  if config.normalization == "torchvision" and spec.image_shape[-1] != 3:
    _fail(f"normalization='torchvision' is torchvision's RGB mean and std; {config.dataset} images "
          f"have {spec.image_shape[-1]} channel(s). Use per_channel.")
  if config.num_classes and config.num_classes != spec.num_classes and config.dataset != "synthetic":
    _fail(f"num_classes={config.num_classes} but dataset {config.dataset!r} has {spec.num_classes}; "
          "set 0 to use the dataset's.")
  if config.validation_split >= spec.train_size:
    _fail(f"validation_split={config.validation_split} must be in [0, {spec.train_size}) for "
          f"{config.dataset} ({spec.train_size} training examples).")
  train = spec.train_size - config.validation_split
  if config.data_on_device and config.batch_size > train:
    _fail(f"batch_size={config.batch_size} exceeds the {train} training examples held on device.")


def _schedule(config) -> None:
  boundaries = tuple(config.lr_decay_steps)
  if any(b < 0 for b in boundaries):
    _fail(f"lr_decay_steps must be non-negative, got {boundaries!r}.")
  # Strictly increasing: a repeated boundary would be an ambiguous double drop.
  if any(a >= b for a, b in zip(boundaries, boundaries[1:])):
    _fail(f"lr_decay_steps must be strictly increasing, got {boundaries!r}.")
  if config.warmup_mode == "error" and not (config.warmup_steps > 0
                                            and 0 < config.warmup_error_threshold < 1):
    _fail(f"warmup_mode='error' holds warmup_learning_rate until the training error is below "
          f"warmup_error_threshold (in (0, 1); got {config.warmup_error_threshold}), for at most "
          f"warmup_steps (> 0; got {config.warmup_steps}) steps.")
  if config.warmup_steps > config.total_steps:
    _fail(f"warmup_steps ({config.warmup_steps}) must not exceed total_steps ({config.total_steps}).")
  if config.lr_schedule in ("cosine", "linear") and config.warmup_steps == config.total_steps:
    _fail(f"lr_schedule {config.lr_schedule!r} needs total_steps > warmup_steps, got "
          f"warmup_steps = total_steps = {config.total_steps}.")


def _cadence(config) -> None:
  k = config.steps_per_dispatch
  for key in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
    if config[key] % k:
      _fail(f"{key}={config[key]} must be a multiple of steps_per_dispatch={k} (metrics, "
            "evaluations and checkpoints happen between dispatches).")
  try:
    steps = profiling.parse(config.profile_steps)
  except ValueError:
    steps = (0, 0)
  if steps and not 1 <= steps[0] <= steps[1] <= config.total_steps:
    _fail(f"profile_steps={config.profile_steps!r} must be \"A:B\" with 1 <= A <= B <= total_steps="
          f"{config.total_steps} (steps A to B traced into <workdir>/profile), or \"\" for none.")
  if config.data_on_device and config.parallelism != "jit":
    _fail("data_on_device=True needs parallelism='jit' (the batch is drawn inside the jit-compiled "
          "step over the mesh).")


def _finetuning(config) -> None:
  if (config.freeze_bn_stats or config.freeze_backbone) and not config.init_from:
    _fail("freeze_bn_stats and freeze_backbone keep what a pretrained network learnt; set "
          "init_from=WORKDIR (a run's, or `resnet-jax convert`'s) to start from one.")


def _devices(config, devices) -> None:
  devices = jax.devices() if devices is None else devices
  n, processes = derived.device_counts(config, devices)
  if config.num_devices > len(devices):
    _fail(f"num_devices={config.num_devices} but only {len(devices)} devices exist; use 0 for all.")
  if config.num_devices and processes > 1:
    _fail("num_devices must be 0 (all devices) in a multi-process run.")
  # The training batch is split evenly (the paper's BN statistics depend on it); the evaluation
  # batch is padded up to a multiple instead (`derived.eval_batch_size`), so it needs no check.
  if config.batch_size % n or config.batch_size % processes:
    _fail(f"batch_size={config.batch_size} must be divisible by the number of devices ({n}) and "
          f"processes ({processes}).")
  # Under jit each BN layer sees the global batch; under pmap a device's share, and a group larger
  # than that spans devices (resnet_jax.models.layers.BatchNorm, whose rule this is).
  pmap = config.parallelism == "pmap"
  facts = derived.derive(config, devices)
  problem = bn_group_problem(config.bn_group_size,
                             facts.device_batch_size if pmap else facts.batch_size,
                             facts.num_devices if pmap else None)
  if problem:
    _fail(problem)
