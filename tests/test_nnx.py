"""Our Linen models inside an `nnx.Module` through Flax's Linen-to-NNX bridge (`nnx.bridge.ToNNX`).

One NNX training step of a ResNet-8 backbone with an `nnx.Linear` head must equal the same step
written in Linen: the ResNet-8 classifier with that head, `jax.grad` and SGD.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from resnet_jax import models


class Classifier(nnx.Module):
  """A ResNet-8 backbone (Linen, bridged) and a new NNX head."""

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
    self.backbone = nnx.bridge.ToNNX(models.get_model("resnet8", num_classes=0), rngs=rngs)
    self.head = nnx.Linear(64, num_classes, rngs=rngs)

  def __call__(self, x, train: bool = False):
    # The bridge applies the Linen module with nothing mutable unless told: inference by default.
    # Training mode needs batch_stats mutable, and the bridge writes the updates back.
    features = (self.backbone(x, train=True, mutable=["batch_stats"]) if train
                else self.backbone(x))
    return self.head(features)


def _loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_one_nnx_training_step_equals_the_linen_step():
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  labels = jnp.arange(8) % 5
  model = Classifier(5, rngs=nnx.Rngs(0))
  nnx.bridge.lazy_init(model, x)  # Linen needs an input to create its variables

  # The same variables in Linen's layout: our classifier's head is a dense layer like nnx.Linear.
  params = {**nnx.to_pure_dict(nnx.state(model.backbone, nnx.Param)),
            "head": nnx.to_pure_dict(nnx.state(model.head, nnx.Param))}
  batch_stats = nnx.to_pure_dict(nnx.state(model.backbone, nnx.BatchStat))
  linen = models.get_model("resnet8", num_classes=5)
  np.testing.assert_allclose(model(x), linen.apply({"params": params, "batch_stats": batch_stats}, x),
                             rtol=1e-5, atol=1e-5)

  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

  @nnx.jit
  def nnx_step(model, optimizer, x, labels):
    loss, grads = nnx.value_and_grad(lambda m: _loss(m(x, train=True), labels))(model)
    optimizer.update(model, grads)
    return loss

  @jax.jit
  def linen_step(params, batch_stats, x, labels):
    def loss_fn(p):
      logits, updates = linen.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                    mutable=["batch_stats"])
      return _loss(logits, labels), updates["batch_stats"]
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, optax.apply_updates(params, jax.tree_util.tree_map(lambda g: -0.1 * g, grads)), new_stats

  nnx_loss = nnx_step(model, optimizer, x, labels)
  linen_loss, want_params, want_stats = linen_step(params, batch_stats, x, labels)
  np.testing.assert_allclose(nnx_loss, linen_loss, rtol=1e-6)
  got_params = {**nnx.to_pure_dict(nnx.state(model.backbone, nnx.Param)),
                "head": nnx.to_pure_dict(nnx.state(model.head, nnx.Param))}
  got_stats = nnx.to_pure_dict(nnx.state(model.backbone, nnx.BatchStat))
  assert jax.tree_util.tree_structure(got_params) == jax.tree_util.tree_structure(want_params)
  for got, want in ((got_params, want_params), (got_stats, want_stats)):
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The step changed both: parameters moved, and BN's running statistics were updated in place.
  assert not np.allclose(got_stats["stem_bn"]["mean"], batch_stats["stem_bn"]["mean"])
  assert not np.allclose(got_params["head"]["kernel"], params["head"]["kernel"])
