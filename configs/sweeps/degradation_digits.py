"""The degradation problem in minutes: plain-20/56 vs ResNet-20/56 on the bundled digits (He et al. 2015,
Fig. 1 and Fig. 6, on a small real dataset that needs no download).

  resnet-jax sweep --config configs/sweeps/degradation_digits.py --workdir runs/degradation

Expect plain-56 to end with a clearly higher training error than plain-20 (deeper plain nets train
worse), while ResNet-56 stays close to ResNet-20 and far below plain-56.
"""

from resnet_jax.config import default_config


def get_config():
  config = default_config()
  config.dataset = "digits"
  config.batch_size = 128
  config.learning_rate = 0.1          # the paper's CIFAR recipe otherwise: momentum 0.9, wd 1e-4
  config.total_steps = 200            # an honest short schedule: ~17 epochs of the 1,497 images
  config.lr_decay_steps = (100, 150)  # the paper's /10 drops, at the same fractions of training
  # The paper's ResNet-110 warm-up (sec. 4.2: lr 0.01 until training starts converging), for every
  # net alike. On 8x8 digits a 56-layer net at 0.1 from step 1 stalls: without it ResNet-56 ended at
  # 54% training error after 200 steps, with it at 0%.
  config.warmup_mode = "constant"
  config.warmup_learning_rate = 0.01
  config.warmup_steps = 20
  config.log_every_steps = 20
  config.eval_every_steps = 50
  config.checkpoint_every_steps = 100
  config.seed = 0
  return config


def get_grid():
  return {"model": ["plain20", "plain56", "resnet20", "resnet56"]}
