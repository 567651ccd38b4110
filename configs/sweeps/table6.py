"""He et al. 2015, Table 6 and Fig. 6 (left): CIFAR-10 ResNet-20/32/44/56/110 x 5 seeds, plus plain-20/56.

  benchmarks/table6.sh WORKDIR          # on one GPU, with the fastest options; writes the report
  resnet-jax sweep --config configs/sweeps/table6.py --workdir WORKDIR --config.data_dir=DIR

Section 4.2's recipe exactly, as configs/cifar10.py gives it for each net: batch 128 with BN over 64
examples (two GPUs), lr 0.1 divided by 10 at 32k and 48k steps, 64k steps, momentum 0.9, weight decay
1e-4, per-pixel mean, pad-crop-flip, the 0.01 warm-up for ResNet-110, test on the 10,000 test images.
The paper reports one run per depth except ResNet-110 (best of 5, mean 6.61 +- 0.16); five seeds of
each give the mean and spread the report prints beside the paper's column. The plain nets (Fig. 6,
left) get the same five seeds: 35 runs in all.

`:smoke` is the same sweep shrunk to check the whole path in minutes on a CPU: two depths of the
smallest nets (resnet8, plain8), two seeds, 20 steps.
"""

from configs import cifar10

DEPTHS = (20, 32, 44, 56, 110)
SEEDS = (0, 1, 2, 3, 4)
PLAIN = ("plain20", "plain56")


def get_config(arg: str = ""):
  """The base shared by every member (the first model's preset): what the sweep's report describes."""
  return member_config({"model": "resnet8" if arg == "smoke" else "resnet20", "seed": 0}, arg)


def member_config(values: dict, arg: str = ""):
  """Each net's own section 4.2 preset (ResNet-110's warm-up included), with the member's seed."""
  config = cifar10.get_config(values["model"])
  config.seed = values["seed"]
  if arg == "smoke":
    config.total_steps = 20
    config.lr_decay_steps = (10, 15)
    config.eval_every_steps = 10
    config.checkpoint_every_steps = 10
    config.log_every_steps = 10
  elif arg:
    raise ValueError(f"configs/sweeps/table6.py:{arg}: the only variant is ':smoke'.")
  return config


def get_grid(arg: str = ""):
  if arg == "smoke":
    return {"model": ["resnet8", "plain8"], "seed": [0, 1]}
  return {"model": [f"resnet{d}" for d in DEPTHS] + list(PLAIN), "seed": list(SEEDS)}
