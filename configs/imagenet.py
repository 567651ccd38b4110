"""He et al. 2015, section 3.4: the ImageNet recipe, plus a "modern" variant.

  resnet-jax train --config configs/imagenet.py:resnet50 --config.data_dir=gs://BUCKET/tfds --workdir DIR
  resnet-jax train --config configs/imagenet.py:resnet34-B ...       # Table 3's option B
  resnet-jax train --config configs/imagenet.py:resnet50-modern ...

The argument is an ImageNet model (resnet18/34/50/101/152, plain18/34/50/101/152), optionally followed
by "-A", "-B" or "-C" (a residual net's shortcuts, sec. 3.3) or by "-modern": linear warm-up + cosine,
label smoothing, the linear scaling rule, bfloat16, zero-init residuals, inception crops and no
colour augmentation (Goyal et al. 2017; He et al. 2019, "Bag of Tricks").

Without "-modern" it is the paper's network and recipe: v1 stride placement, option-A shortcuts for
ResNet-18/34 (Table 2: "identity mapping for all shortcuts and zero-padding for increasing dimensions",
so they have exactly their plain twins' parameters) and option B for 50/101/152 (sec. 3.3), weight
decay on every parameter (as configs/cifar10.py), scale augmentation with the standard PCA colour
augmentation, and 10-crop testing, so its validation error compares with Tables 2-4 like for like
(`--config.eval_crops=multiscale` for Tables 4-5's multi-scale testing).
"""

from resnet_jax.config import default_config

TRAIN_EXAMPLES = 1_281_167  # ILSVRC-2012 training images


SHORTCUTS = ("A", "B", "C")  # sec. 3.3: zero-padding, projections where the shape changes, everywhere


def get_config(arg: str = "resnet50"):
  model, _, variant = arg.partition("-")
  if model not in {f"{k}{d}" for k in ("resnet", "plain") for d in (18, 34, 50, 101, 152)}:
    raise ValueError(f"configs/imagenet.py:{arg}: expected an ImageNet net such as resnet50 or plain34, "
                     "optionally with -A, -B, -C (shortcuts) or -modern.")
  if variant not in ("", "modern", *SHORTCUTS):
    raise ValueError(f"configs/imagenet.py:{arg}: the variants are -A, -B, -C (a residual net's "
                     "shortcuts, Table 3) and -modern.")
  if variant in SHORTCUTS and model.startswith("plain"):
    raise ValueError(f"configs/imagenet.py:{arg}: a plain net has no shortcuts; use resnet{model[5:]}.")
  c = default_config()
  c.model = model                  # option-B shortcuts (the registry's default for ImageNet nets)
  c.dataset = "imagenet2012"
  c.batch_size = 256               # "mini-batch size of 256"
  c.bn_group_size = 32             # 256 on 8 GPUs: BN statistics over 32 images per GPU
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.eval_batch_size = 1000         # 50,000 validation images = 50 batches
  steps_per_epoch = TRAIN_EXAMPLES // c.batch_size
  if variant != "modern":
    # The paper's network: the bottleneck's first 1x1 carries the stride (Table 1's FLOPs: 3.8e9 for
    # ResNet-50); the registry's default is torchvision's v1.5 (stride on the 3x3), which -modern keeps.
    c.stride_placement = "v1"
    if model.startswith("resnet"):
      # Table 2 compares plain and residual 18/34 with option A; 50/101/152 use B (sec. 3.3).
      c.shortcut = variant or ("A" if model in ("resnet18", "resnet34") else "B")
    # The same decay as the CIFAR preset (configs/cifar10.py): the paper states a plain L2 weight decay
    # of 1e-4 and exempts nothing, so BN scales and biases decay too.
    c.weight_decay_mask = "all"
    c.eval_crops = "ten"           # "we adopt the standard 10-crop testing" (sec. 3.4), for Tables 2-4
    c.eval_batch_size = 100        # x 10 crops = 1,000 images through the net per batch
    c.augment = "scale"            # shorter side in [256, 480], 224 crop + flip (sec. 3.4)
    c.color_augment = "pca"        # "the standard color augmentation in [21] is used" (sec. 3.4)
    c.normalization = "per_pixel_mean"
    c.learning_rate = 0.1          # "starts from 0.1 and is divided by 10 when the error plateaus"
    # The paper trains "up to 60e4 iterations" (120 epochs) dividing at plateaus; we use the usual
    # fixed form of that rule, /10 at epochs 30 and 60, over 90 epochs (--config.total_steps=600000
    # for the paper's length).
    c.lr_schedule = "step"
    c.lr_decay_steps = (30 * steps_per_epoch, 60 * steps_per_epoch)
    c.total_steps = 90 * steps_per_epoch
  else:
    c.augment = "inception"
    c.normalization = "per_channel"
    c.batch_size = 1024
    c.bn_group_size = 128
    c.learning_rate = 0.1
    c.lr_scaling = "linear"        # lr = 0.1 x 1024/256 = 0.4 (Goyal et al. 2017)
    c.lr_schedule = "cosine"
    steps_per_epoch = TRAIN_EXAMPLES // c.batch_size
    c.warmup_mode = "linear"
    c.warmup_steps = 5 * steps_per_epoch  # 5-epoch gradual warm-up (Goyal et al. 2017)
    c.total_steps = 90 * steps_per_epoch
    c.lr_decay_steps = ()
    c.label_smoothing = 0.1        # Szegedy et al. 2016
    c.dtype = "bfloat16"           # parameters and BN statistics stay float32
    c.zero_init_residual = model.startswith("resnet")  # Goyal et al. 2017; a plain net has no identity
    # Kept from the defaults, on purpose: v1.5 strides (torchvision's, ~0.5% more accurate) and no
    # decay on BN parameters and biases (He et al. 2019, "Bag of Tricks", sec. 3.1).
    c.stride_placement = "v1.5"
    c.weight_decay_mask = "kernels"
  c.log_every_steps = 100
  c.eval_every_steps = 5 * steps_per_epoch
  c.checkpoint_every_steps = 2000
  return c
