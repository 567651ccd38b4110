"""The degradation problem on real CIFAR-10: plain-20/56 vs ResNet-20/56 (He et al. 2015, Fig. 6),
on a schedule shortened to fit about an hour of a 2-core CPU.

  resnet-jax prepare cifar10 --source ../shared/data/cifar10 --data-dir data/tfds
  resnet-jax sweep --config configs/sweeps/degradation_cifar10.py --workdir runs/degradation_cifar10 \
      --config.data_dir=data/tfds

The section 4.2 recipe (configs/cifar10.py: batch 128, lr 0.1, momentum 0.9, weight decay 1e-4,
per-pixel mean, pad-crop-flip, BN over 64 examples), for 500 steps (1.3 epochs) instead of 64k, with
the two /10 drops at the same fractions of training (50% and 75%). This shows the start of Fig. 6:
how fast each net trains, not the paper's final errors.

One change, for all four nets: the lr rises linearly from 0 to 0.1 over the first 100 steps (Goyal et
al. 2017). At 0.1 from step 1, a 56-layer ResNet's loss spikes (5 -> 19) and then sits near ln 10 for
100-250 steps; a PyTorch twin on the same batches does the same (benchmarks/torch_twin.py). Over 64k
steps that costs nothing; in a 500-step run it is half the run, and the /10 drop at step 250 freezes it
(docs/results/degradation_cifar10/README.md has both runs). `--config.warmup_steps=0` is the paper's.
"""

from configs import cifar10


def get_config():
  config = cifar10.get_config("resnet20")  # the model comes from the grid
  config.total_steps = 500
  config.lr_decay_steps = (250, 375)
  config.warmup_mode = "linear"
  config.warmup_steps = 100
  config.log_every_steps = 10
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 50
  config.eval_batch_size = 500
  return config


def get_grid():
  return {"model": ["plain20", "plain56", "resnet20", "resnet56"]}
