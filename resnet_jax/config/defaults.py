"""Every configuration key of resnet-jax, with its default and why.

Experiment files (configs/quickstart.py, configs/cifar10.py, ...) start from `default_config()` and
override a few keys; derived values are computed there, not in the loop. The command line overrides any key with `--config.<key>=<value>`; an unknown key or
a value of the wrong type is an error that names the key.
"""

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """The defaults: ResNet-20 on the bundled digits dataset, SGD-momentum as in He et al. 2015."""
  c = ml_collections.ConfigDict()
  for section in (_model, _data, _optimisation, _finetuning, _schedule, _parallelism):
    section(c)
  return c


def _model(c: ml_collections.ConfigDict) -> None:
  """The network (resnet_jax.models registry)."""
  c.model = "resnet20"               # a name from `resnet-jax models`
  c.shortcut = ""                    # "" = the preset's (A for CIFAR nets, B for ImageNet nets); or A/B/C
  c.stride_placement = ""            # "" = the preset's (v1.5 for ImageNet); "v1" = the paper's, or "v1.5"
  c.zero_init_residual = False       # last BN scale of each residual branch = 0 (Goyal et al. 2017)
  c.width_multiplier = 1.0           # scales every stage's width
  c.dtype = "float32"                # computation dtype; "bfloat16" keeps params and BN stats in float32
  c.bn_momentum = 0.9                # running-statistics decay, as torchvision's momentum=0.1
  c.bn_group_size = 0                # examples per BN statistics group; 0 = whole global batch (sync BN),
                                     # 32 = the paper's per-GPU statistics on ImageNet (8 GPUs x 32)
  c.scan_blocks = False              # nn.scan over each stage's identical blocks: compile time no longer
                                     # grows with depth (ResNet-1202); same numerics
  c.remat_blocks = False             # recompute block activations in the backward pass: less memory


def _data(c: ml_collections.ConfigDict) -> None:
  """The dataset, its augmentation and normalisation, and the batch."""
  c.dataset = "digits"               # digits | synthetic | a TFDS name (cifar10, cifar100, imagenet2012)
  c.data_dir = ""                    # where prepared datasets live (local path or gs://); "" = default
  c.augment = "none"                 # "none"; "cifar" (4-px zero pad, random 32x32 crop, flip: sec. 4.2);
                                     # "inception" (random-resized crop + flip); "scale" (shorter side
                                     # in [256, 480], 224 crop + flip: sec. 3.4)
  c.normalization = "per_channel"    # "per_channel" standardisation, "per_pixel_mean" (the paper's), or
                                     # "torchvision" (its fixed ImageNet mean/std: for its converted weights)
  c.normalization_examples = 50000   # TFDS: training images the statistics come from (all of CIFAR's
                                     # 50k; lower it for ImageNet, where each one is a JPEG decode)
  c.validation_split = 0             # examples held out of training for validation (paper: 5000 of 50k);
                                     # 0 = evaluate on the test split
  c.data_threads = 2                 # TFDS: Grain threads building batches ahead; 0 = in the loop
  c.prefetch_batches = 4             # TFDS: batches built ahead (bounds host memory to about this many)
  c.data_workers = 0                 # TFDS: worker processes building batches (Grain mp_prefetch), for
                                     # hosts whose cores one Python process cannot use; 0 = threads only
  c.data_cache_dir = ""              # local copy of a gs:// data_dir (array_record reads local files
                                     # only); "" = ~/.cache/resnet_jax/tfds
  c.num_classes = 0                  # 0 = the dataset's own number of classes
  c.synthetic_channels = 3           # synthetic data: channels per image (1 to match the digits)
  c.image_size = 0                   # synthetic data and variable-size TFDS images (ImageNet): side
                                     # in pixels; 0 = the model's default (224 for ImageNet nets)
  c.batch_size = 128                 # GLOBAL batch, split across all devices and processes
  c.eval_batch_size = 256            # global batch for evaluation; the last batch is padded and masked
  c.eval_crops = "center"            # test view of variable-size images: "center" (resize, centre crop),
                                     # "ten" (the paper's 10-crop testing, sec. 3.4: corners, centre
                                     # and flips, scores averaged; eval_batch_size counts images), or
                                     # "multiscale" (Tables 4-5: the net at each of eval_scales, scores
                                     # averaged)
  c.eval_scales = (224, 256, 384, 480, 640)  # multiscale: the shorter sides (sec. 3.4), central squares
  c.color_augment = "none"           # "pca": AlexNet's colour augmentation (sec. 3.4 "standard color
                                     # augmentation in [21]"): RGB shift along the PCA of ImageNet's pixels
  c.color_augment_std = 0.1          # std of the PCA alphas (Krizhevsky et al. 2012: 0.1)


def _optimisation(c: ml_collections.ConfigDict) -> None:
  """The optimizer and learning-rate schedule (resnet_jax.training.optim)."""
  c.learning_rate = 0.1              # peak learning rate (before the linear scaling rule, if any)
  c.lr_scaling = "none"              # "none", or "linear": lr = learning_rate * batch_size / 256 (Goyal 2017)
  c.lr_schedule = "step"             # "step" (divide at lr_decay_steps), "cosine" or "linear" (to 0
                                     # at total_steps, after the warm-up), or "constant"
  c.lr_decay_steps = (32000, 48000)  # step schedule boundaries: the paper's CIFAR recipe (section 4.2)
  c.lr_decay_factor = 0.1            # multiply the lr by this at each boundary ("divided by 10")
  c.warmup_steps = 0                 # length of the warm-up phase
  c.warmup_mode = "linear"           # "linear" (0 -> lr, Goyal 2017), "constant" (warmup_learning_rate
                                     # for warmup_steps), or "error" (the paper's ResNet-110 rule:
                                     # warmup_learning_rate until the training error < threshold)
  c.warmup_learning_rate = 0.01      # lr of a "constant" or "error" warm-up (paper: 0.01)
  c.warmup_error_threshold = 0.8     # "error" warm-up: until the running training error is below this
                                     # (paper: 80%); warmup_steps caps it
  c.momentum = 0.9                   # SGD momentum (paper: 0.9)
  c.nesterov = False                 # Nesterov momentum instead of heavy-ball
  c.momentum_style = "optax"         # "optax" (v = m v + g; w -= lr v) or "caffe" (v = m v + lr g; w -= v),
                                     # the paper's Caffe update; the two differ right after an lr drop
  c.weight_decay = 1e-4              # L2 weight decay (paper: 1e-4), added to the gradient
  c.weight_decay_mask = "kernels"    # "kernels" (conv and dense kernels) or "all" (also BN and biases)
  c.grad_clip_norm = 0.0             # clip the global gradient norm to this; 0 = no clipping
  c.label_smoothing = 0.0            # 0 = the paper's plain softmax cross-entropy


def _finetuning(c: ml_collections.ConfigDict) -> None:
  """Starting from another run's weights (configs/finetune.py)."""
  c.init_from = ""                   # a workdir (a run's, or `resnet-jax convert`'s) whose newest checkpoint's
                                     # params and batch_stats seed step 0 of a NEW run; "" = random init.
                                     # Resuming this run reads its own checkpoints, never init_from
  c.init_new_head = False            # init_from: a fresh head even when the class count matches (other
                                     # classes); a different class count always gets a fresh head
  c.freeze_bn_stats = False          # BN normalises with its running statistics and never updates them
                                     # (inference-mode BN); BN scale and bias still train
  c.freeze_backbone = False          # train only the head: every other parameter gets a zero update and
                                     # no weight decay


def _schedule(c: ml_collections.ConfigDict) -> None:
  """How long the run trains, and how often it logs, evaluates and checkpoints."""
  c.total_steps = 64000              # paper: stop at 64k iterations on CIFAR-10
  c.seed = 0                         # one seed for init, data order and augmentation
  c.log_every_steps = 50             # host fetches metrics this often (all steps are still recorded)
  c.eval_every_steps = 1000          # 0 = only at the end
  c.checkpoint_every_steps = 1000    # 0 = only at the end
  c.keep_checkpoints = 3             # newest checkpoints kept in <workdir>/checkpoints
  c.profile_steps = ""               # "A:B": a JAX profiler trace of steps A to B in <workdir>/profile
                                     # (TensorBoard's profile plugin, Perfetto); "" = none


def _parallelism(c: ml_collections.ConfigDict) -> None:
  """Devices, strategies, and what makes the step fast."""
  c.steps_per_dispatch = 1           # K > 1: K steps per dispatch (lax.scan); every step still recorded.
                                     # Log, eval and checkpoint cadences must be multiples of K
  c.data_on_device = False           # hold the training set on the devices and draw + augment each
                                     # batch inside the compiled step (small datasets; jit only)
  c.parallelism = "jit"              # "jit" (jax.jit over a device mesh, axis "data") or "pmap"
  c.num_devices = 0                  # 0 = all local devices; else use the first N (tests, debugging)
  c.vectorize = False                # sweeps only: train compatible members together, one vmapped
                                     # step over a member axis (training/grouping.py, group_step.py)
  c.vectorize_max_members = 0        # cap on members per vectorised group; 0 = as many as fit in
                                     # device memory by XLA's estimate of one member's step
  c.cpu_fusion = "eltwise,reduce"    # XLA:CPU only: YNNPACK library fusions for the compiled steps
                                     # (comma-separated from dot,eltwise,reduce,conv): ~2x faster ResNet-56
                                     # steps, ~1.6x the memory; "" = XLA's default (docs/PERFORMANCE.md)
  c.compilation_cache_dir = ""       # the `resnet-jax` command's persistent compilation cache: a folder,
                                     # "off", or "" = $RESNET_JAX_COMPILATION_CACHE, else
                                     # ~/.cache/resnet_jax/jax ($RESNET_JAX_CACHE/jax). A second start
                                     # of a run compiles nothing it compiled before


# Keys a run may change when it resumes from its checkpoints: they change where things are, how often
# the host looks, or how the same arithmetic is laid out on devices (tested equal to 1e-5), never
# what the run computes. Every other key must keep its value (resnet_jax.config.resume checks),
# so a new key is protected by default. total_steps may grow or shrink, except under the cosine and
# linear schedules, whose shapes it fixes.
CHANGEABLE_ON_RESUME = (
    "total_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
    "keep_checkpoints", "eval_batch_size", "eval_crops", "eval_scales", "data_dir", "data_cache_dir",
    "data_threads", "prefetch_batches", "data_workers", "num_devices", "parallelism", "steps_per_dispatch",
    "cpu_fusion", "remat_blocks", "vectorize", "vectorize_max_members", "compilation_cache_dir",
    "profile_steps",
)
