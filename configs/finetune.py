"""Fine-tuning: a new run seeded from a trained network (ours, or torchvision's via `resnet-jax convert`).

  resnet-jax convert --from torchvision resnet50 IMAGENET1K_V2 --workdir runs/tv-resnet50
  resnet-jax train --config configs/finetune.py --workdir runs/ft-cifar10 \\
      --config.init_from=runs/tv-resnet50 --config.model=resnet50 --config.dataset=cifar10 \\
      --config.normalization=torchvision --config.data_dir=...
  resnet-jax train --config configs/finetune.py:linear ...   # train the new head only

`init_from` seeds step 0 only: the backbone's parameters and BN statistics come from its newest
checkpoint, the head is new when the class count differs, and the optimizer starts afresh. Re-running
the same command resumes the fine-tuning run from its own checkpoints. `model` must be the source's.

The argument picks what trains: "" (default) every layer with BN statistics frozen (small batches of
a new dataset would otherwise overwrite ImageNet statistics), at a tenth of the from-scratch rate;
"linear" the head alone (a linear probe of frozen features), at the from-scratch rate.
"""

from resnet_jax.config import default_config


def get_config(arg: str = ""):
  if arg not in ("", "linear"):
    raise ValueError(f"configs/finetune.py:{arg}: the only variant is ':linear' (train the head only).")
  c = default_config()
  c.init_from = ""                 # required: --config.init_from=WORKDIR (a run's or a conversion's)
  c.freeze_bn_stats = True         # BN in inference mode: the source's running statistics stay
  c.freeze_backbone = arg == "linear"
  c.batch_size = 128
  c.learning_rate = 0.1 if arg == "linear" else 0.01  # the from-scratch peak is 0.1
  c.lr_schedule = "cosine"         # no step boundaries to tune for a short run
  c.lr_decay_steps = ()
  c.warmup_steps = 0
  c.weight_decay = 1e-4
  c.total_steps = 1000
  c.log_every_steps = 50
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 250
  return c
