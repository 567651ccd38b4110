"""Quickstart: ResNet-20 on scikit-learn's bundled digits, about 45 s on 2 CPU cores (2026-12-01, Intel Xeon).

  resnet-jax train --config configs/quickstart.py --workdir runs/quickstart
"""

from resnet_jax.config import default_config


def get_config():
  config = default_config()
  config.model = "resnet20"
  config.dataset = "digits"      # 1,497 training images of 8x8: ~26 epochs in 300 steps of 128
  config.batch_size = 128
  config.learning_rate = 0.1
  config.total_steps = 300
  config.lr_decay_steps = (150, 225)  # the paper's two /10 drops, at the same fractions (32k/64k, 48k/64k)
  config.log_every_steps = 10
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 100
  return config
