"""`python -m resnet_jax.cli ...`: the `resnet-jax` command."""

import sys

from resnet_jax.cli import entry_point

sys.exit(entry_point())
