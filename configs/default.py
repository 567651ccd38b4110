"""The defaults as a config file: every key at its value in `resnet_jax.config.default_config()`.

  resnet-jax train --config configs/default.py --workdir runs/defaults   # ResNet-20 on the digits

Every key, with its comment, is listed in resnet_jax/config/defaults.py (it ships with the package).
"""

from resnet_jax.config import default_config


def get_config():
  return default_config()
