"""Eight seeds of ResNet-8 on the bundled digits, trained together as one vectorised group.

  resnet-jax sweep --config configs/sweeps/seeds_digits.py --workdir runs/seeds --vectorize

The members differ only in `seed` (initialisation, data order and augmentation), so `--vectorize`
trains all eight with one compiled step over a member axis (docs/guides/paper.md, "Many runs in one
step"); without it they run one after another and give the same numbers. `:lr` also varies the learning rate over
0.05, 0.1 and 0.2 (24 members, still one group up to the memory cap).
"""

from resnet_jax.config import default_config


def get_config(arg: str = ""):
  del arg
  config = default_config()
  config.model = "resnet8"            # 6n+2 with n=1: the smallest CIFAR net, quick to compile
  config.dataset = "digits"
  config.batch_size = 128
  config.learning_rate = 0.1          # the paper's CIFAR recipe: momentum 0.9, weight decay 1e-4
  config.total_steps = 200            # ~17 epochs of the 1,497 training images
  config.lr_decay_steps = (100, 150)  # the paper's /10 drops at the same fractions of training
  config.log_every_steps = 20
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 100
  return config


def get_grid(arg: str = ""):
  grid = {"seed": list(range(8))}
  if arg == "lr":
    grid = {"learning_rate": [0.05, 0.1, 0.2], **grid}
  elif arg:
    raise ValueError(f"seeds_digits.py takes no argument or ':lr', got {arg!r}.")
  return grid
