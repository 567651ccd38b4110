"""The networks: residual nets and their plain twins (He et al. 2015), pre-activation blocks, VGG-19.

What lives here: `layers` (conv, grouped BatchNorm, classifier, option-A shortcut, the inits),
`blocks` (basic and bottleneck blocks, residual and plain), `preact` (He et al. 2016 blocks),
`stages` (a stage unrolled or scanned), `resnet` (the ResNet module), `vgg`, `flops` (parameter and
multiply-add counts) and `registry` (every preset by name: `get_model`, `list_models`).

What it may import: jax, flax, numpy and `resnet_jax.checks`; nothing from `config`, `data`,
`training` or `experiments`. So `pip install resnet-jax` users embed a model with the light install.

  from resnet_jax import models
  model = models.get_model("resnet56")
"""

from resnet_jax.models.blocks import (SHORTCUTS, STRIDE_PLACEMENTS, BottleneckBlock, PlainBlock,
                                      PlainBottleneckBlock, ResidualBlock)
from resnet_jax.models.layers import BatchNorm
from resnet_jax.models.preact import PreActBottleneckBlock, PreActResidualBlock
from resnet_jax.models.registry import (CIFAR_DEPTHS, IMAGENET_DEPTHS, default_image_size, get_model,
                                        list_models)
from resnet_jax.models.resnet import ResNet
from resnet_jax.models.vgg import VGG

__all__ = ["get_model", "list_models", "default_image_size", "CIFAR_DEPTHS", "IMAGENET_DEPTHS",
           "ResNet", "VGG", "ResidualBlock", "BottleneckBlock", "PlainBlock",
           "PlainBottleneckBlock", "PreActResidualBlock", "PreActBottleneckBlock", "BatchNorm",
           "SHORTCUTS", "STRIDE_PLACEMENTS"]
