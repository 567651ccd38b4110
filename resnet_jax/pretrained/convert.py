"""A converted network as a run's workdir: config.json and a step-0 Orbax checkpoint.

`resnet-jax eval --workdir DIR` evaluates it like any run, `resnet-jax train` with the same workdir
continues training it (same classes), and `--config.init_from=DIR` seeds a new run from it
(fine-tuning, any classes).
"""

import jax
import ml_collections

from resnet_jax import config as config_lib
from resnet_jax import data
from resnet_jax.models import stages
from resnet_jax.pretrained.torchvision import NAMES
from resnet_jax.run import storage
from resnet_jax.run.errors import ConfigError, WeightsError, WorkdirError
from resnet_jax.training import derived
from resnet_jax.training.lifecycle import RunFiles
from resnet_jax.training.trainer import Trainer


def conversion_config(name: str, config_file: str = "",
                      overrides: dict[str, str] | None = None) -> ml_collections.ConfigDict:
  """The config a converted torchvision `name` is written with (what `resnet-jax convert` uses).

  `config_file` (FILE[:ARG]; default `configs/imagenet.py:NAME`) with model=NAME and torchvision's
  own network and test view forced, then `overrides` ({key: value} strings, as on the command line).
  """
  if name not in NAMES:
    raise ConfigError(f"torchvision weights convert to {', '.join(NAMES)}; got {name!r}.")
  config = config_lib.load_config_file(config_file or f"configs/imagenet.py:{name}")
  config.model = name
  config.normalization = "torchvision"  # the inputs its weights were trained on; overridable below
  # torchvision's network, whatever the preset says: the bottleneck strides its 3x3 (v1.5), where the
  # paper preset strides the 1x1 (v1). The shapes are the same, so only this keeps the conversion true.
  config.stride_placement = "v1.5"
  config.shortcut = ""  # the registry's option B, torchvision's (the paper preset gives 18/34 option A)
  if config.eval_crops == "ten":  # the same images through the net per batch: 10 crops -> 10 examples
    config.eval_batch_size *= 10
  config.eval_crops = "center"  # torchvision's own test view (resize 256, centre 224); overridable
  config.lock()
  config_lib.apply_overrides(config, overrides or {})
  return config


def write(workdir: str, config: ml_collections.ConfigDict, variables: dict) -> dict:
  """Writes `variables` ({"params", "batch_stats"}, unrolled layout) as step 0 of a run of `config`.

  The state is the trainer's own initial state of that run (`Trainer.init_state`) with these
  parameters and statistics: the optimizer's initial state and the RNG of `config.seed`, exactly
  what a new run of `config` starts with. Everything is checked before anything is written; a
  workdir that already holds a checkpoint is refused. Returns a summary (workdir, model, classes,
  arrays).
  """
  # torchvision's ResNets: option-B shortcuts and the stride on the bottleneck's 3x3. v1 has the same
  # shapes, so the shape check below would not catch it, and every strided block would compute wrong.
  if config.stride_placement not in ("", "v1.5") or config.shortcut not in ("", "B"):
    raise ConfigError(f"torchvision's {config.model} is stride_placement='v1.5' with option-B "
                      f"shortcuts; this config has stride_placement={config.stride_placement!r}, "
                      f"shortcut={config.shortcut!r}. Set --config.stride_placement=v1.5.")
  params, batch_stats = variables["params"], variables["batch_stats"]
  if "head" not in params:
    raise WeightsError("the variables have no head; a run's checkpoint needs one (convert with head).")
  num_classes = int(params["head"]["bias"].shape[0])
  if config.num_classes not in (0, num_classes):
    raise ConfigError(f"the converted head has {num_classes} classes but num_classes="
                      f"{config.num_classes}; convert as is and fine-tune with "
                      "--config.init_from=WORKDIR for other classes.")
  config.unlock()
  config.num_classes = num_classes  # written out, so eval checks the dataset against the head
  config.lock()
  if config.scan_blocks:
    params, batch_stats = stages.to_scanned(params), stages.to_scanned(batch_stats)
  channels = int(jax.tree_util.tree_leaves(params["stem_conv"])[0].shape[-2])
  size = derived.image_size(config)  # the parameters do not depend on it
  trainer = Trainer(config, data=data.DataSpec((size, size, channels), num_classes, 0, False, False))
  template = trainer.abstract_state()
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: tuple(x.shape), tree)
  if (shapes({"params": template.params, "batch_stats": template.batch_stats})
      != shapes({"params": params, "batch_stats": batch_stats})):
    raise WeightsError(f"the converted variables do not fit model={config.model!r} with this config "
                       "(shortcut, stride_placement, width_multiplier?).")
  # A run's workdir, opened as a run opens it: writable, locked, and holding no other run.
  with RunFiles(config, workdir) as files:
    if files.ckpt.latest_step() is not None:
      raise WorkdirError(f"{workdir} already holds checkpoints; use a new --workdir.")
    state = trainer.init_state(variables={"params": params, "batch_stats": batch_stats})
    files.record(trainer, 0)  # config.json, the config history and model.json, as a run's
    files.save(0, state)
  return {"workdir": storage.absolute(workdir), "model": config.model, "num_classes": num_classes,
          "arrays": len(jax.tree_util.tree_leaves(variables)), "step": 0}
