"""He et al. 2015, section 4.2: the CIFAR-10 recipe, for every depth, residual and plain.

  resnet-jax train --config configs/cifar10.py:resnet56 --config.data_dir=DIR --workdir runs/r56

The argument is any CIFAR model name: resnet20/32/44/56/110/1202 or plain20/.../1202 (resnet8/plain8
too, for smoke runs). Residual nets use option-A shortcuts, so they have exactly the parameters of
their plain twins.
"""

from resnet_jax.config import default_config
from resnet_jax.models import CIFAR_DEPTHS


def get_config(model: str = "resnet20"):
  cifar_nets = {f"{kind}{d}" for kind in ("resnet", "plain") for d in CIFAR_DEPTHS}
  depth = int("".join(ch for ch in model if ch.isdigit()) or 0)
  if model not in cifar_nets:
    raise ValueError(f"configs/cifar10.py:{model}: expected a CIFAR net such as resnet56 or plain20 "
                     "(depth 6n+2); use configs/imagenet.py for ImageNet nets.")
  c = default_config()
  c.model = model                  # option-A shortcuts (the registry's CIFAR default)
  c.dataset = "cifar10"
  c.augment = "cifar"              # 4-pixel zero pad, random 32x32 crop, horizontal flip
  c.normalization = "per_pixel_mean"  # "the per-pixel mean subtracted"
  c.validation_split = 0           # the paper chose 64k steps on a 45k/5k split; set 5000 to repeat that
  c.batch_size = 128               # "mini-batch size of 128 on two GPUs" ...
  c.bn_group_size = 64             # ... so BN saw 64 examples per GPU
  c.learning_rate = 0.1
  c.lr_schedule = "step"
  c.lr_decay_steps = (32000, 48000)  # "divide it by 10 at 32k and 48k iterations"
  c.lr_decay_factor = 0.1
  c.total_steps = 64000            # "terminate training at 64k iterations"
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.weight_decay_mask = "all"      # the paper states a plain L2 weight decay of 1e-4 on the weights
  if depth == 110:
    # "0.1 is slightly too large to start converging. So we use 0.01 to warm up the training until the
    # training error is below 80% (about 400 iterations), and then go back to 0.1." The rule itself,
    # decided inside the step (training/optim.py), capped at 5x the paper's ~400 steps.
    c.warmup_mode = "error"
    c.warmup_learning_rate = 0.01
    c.warmup_error_threshold = 0.8
    c.warmup_steps = 2000
  c.eval_batch_size = 500          # 10,000 test images = 20 batches
  c.log_every_steps = 100
  c.eval_every_steps = 4000
  c.checkpoint_every_steps = 2000
  return c
