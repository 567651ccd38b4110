"""The pure training and evaluation steps: `train_step(state, batch) -> (state, metrics)`. No I/O.

Model, optimizer and schedule are bound with `functools.partial` before compilation (see
`resnet_jax.training.parallel`), so the same step runs under `jax.jit` over a mesh (global view, `axis_name`
None) and under `jax.pmap` (`axis_name` set: gradients and metrics are averaged across devices).
"""

import re
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from resnet_jax.data import EvalLayout
from resnet_jax.models import stages

Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs, and nothing else: it is checkpointed whole."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key data; folded with the step for any per-step randomness


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape, variables: Any = None) -> TrainState:
  """A new run's state: parameters initialised with a batch of one example of `image_shape` (H, W, C),
  or the given `variables` ({"params", "batch_stats"}: converted or pretrained weights), with the
  optimizer's initial state and the run's RNG, both from `rng` exactly as a fresh run's."""
  init_rng, state_rng = jax.random.split(rng)
  if variables is None:
    variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    rng=state_rng)


def block_name(key: str) -> str:
  """Groups top-level parameter names into the blocks whose gradient norms we report.

  stem_conv/stem_bn -> stem; stageI_blockJ stays; VGG's stageI_convJ/stageI_bnJ -> stageI_layerJ;
  the classifier (head, fc1, fc2, and a pre-activation net's final_bn) -> head.
  """
  if key.startswith("stem"):
    return "stem"
  if key in ("head", "final_bn") or re.fullmatch(r"fc\d+", key):
    return "head"
  return re.sub(r"_(conv|bn)(\d+)$", r"_layer\2", key)


def block_grad_norms(grads: dict) -> dict[str, jax.Array]:
  """The gradient norm of every block (named by `block_name`), the same with scan_blocks.

  A scanned stack is reduced to one vector of per-block sums of squares before it is split:
  unstacking its gradients into per-block trees first made ResNet-1202's train step take 18 s to
  compile instead of 2.5 s.
  """
  squares: dict[str, jax.Array] = {}
  for key, value in grads.items():
    leaves = jax.tree_util.tree_leaves(value)
    if key.endswith(stages.SCAN_SUFFIX):
      per_block = sum(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=tuple(range(1, x.ndim)))
                      for x in leaves)
      prefix = key[:-len(stages.SCAN_SUFFIX)]
      # Blocks 2..n of the stage; block 1 stays unrolled (stages.py).
      named = {f"{prefix}_block{j + 2}": per_block[j] for j in range(per_block.shape[0])}
    else:
      named = {key: sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)}
    for name, sq in named.items():
      squares[block_name(name)] = squares.get(block_name(name), 0.0) + sq
  return {name: jnp.sqrt(sq) for name, sq in squares.items()}


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy, with optional label smoothing (Szegedy et al. 2016).

  `label_smoothing` may be a traced value (vectorised sweep members): it is then always applied, and
  a value of 0 leaves the targets exactly as they are ((1 - 0) * t + 0 / n = t).
  """
  targets = jax.nn.one_hot(labels, num_classes)
  if not isinstance(label_smoothing, (int, float)) or label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, learning_rate_fn: Callable,
               label_smoothing: float = 0.0, freeze_bn_stats: bool = False,
               axis_name: Optional[str] = None) -> tuple[TrainState, Metrics]:
  """One SGD step on `batch` ({"image", "label"}); returns the new state and scalar metrics.

  Every metric is computed here for every step, so the host can record all of them while fetching
  only every few steps: loss, accuracy, learning rate, global and per-block gradient norms (before any
  clipping), parameter and update norms. `freeze_bn_stats` runs BN in inference mode (its running
  statistics normalise and stay as they are), as when fine-tuning a pretrained net on small batches.
  """
  num_classes = model.num_classes

  def loss_fn(params):
    logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                  train=not freeze_bn_stats, mutable=["batch_stats"])
    loss = jnp.mean(cross_entropy(logits, batch["label"], num_classes, label_smoothing))
    return loss, (logits, updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  if axis_name is not None:
    # Each device differentiated its own share of the mean loss; the global gradient is their mean
    # (also with synchronised BN, whose cross-device terms autodiff routes through the collectives).
    grads, loss, accuracy = jax.lax.pmean((grads, loss, accuracy), axis_name)

  # The batch's error feeds the error-gated warm-up (optim.scale_by_error_gated_lr); other
  # transformations ignore it.
  updates, opt_state = tx.update(grads, state.opt_state, state.params, train_error=1.0 - accuracy)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "train/loss": loss,
      "train/accuracy": accuracy,
      "train/learning_rate": learning_rate_fn(state.step, state.opt_state),
      "train/grad_norm": optax.tree.norm(grads),
      "train/param_norm": optax.tree.norm(params),
      "train/update_norm": optax.tree.norm(updates),
  }
  metrics.update({f"grad_norm/{name}": norm for name, norm in block_grad_norms(grads).items()})
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
              layout: EvalLayout = EvalLayout(), axis_name: Optional[str] = None) -> Metrics:
  """Sums of loss, correct predictions and examples over the real (mask=1) examples of `batch`.

  Sums, not means, so that padded batches and any number of devices count each example exactly once.
  `layout` (the run's `Derived.eval_layout`) says how the images hold each example: one view; ten
  crops, (B, V, H, W, C); or a tuple of arrays (B, H_s, W_s, C), one per scale. Several views'
  softmax scores are averaged, and the loss is that of the averaged scores.
  """
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  images, labels = batch["image"], batch["label"]
  mask = batch["mask"].astype(jnp.float32)
  if layout.crops in ("ten", "multiscale"):
    if layout.crops == "multiscale":  # one forward per scale: the sizes differ
      probs = jnp.mean(jnp.stack([jax.nn.softmax(model.apply(variables, x, train=False))
                                  for x in images]), axis=0)
    else:
      b, v = images.shape[:2]
      logits = model.apply(variables, images.reshape((b * v,) + images.shape[2:]), train=False)
      probs = jnp.mean(jax.nn.softmax(logits.reshape(b, v, -1)), axis=1)
    loss = -jnp.log(jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0])
    scores = probs
  else:
    scores = model.apply(variables, images, train=False)
    loss = cross_entropy(scores, labels, model.num_classes)
  sums = {
      "loss": jnp.sum(loss * mask),
      "correct": jnp.sum((jnp.argmax(scores, -1) == labels) * mask),
      "count": jnp.sum(mask),
  }
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums
