"""Learning-rate schedules and the SGD-momentum optimizer of He et al. 2015.

The paper trains with SGD, momentum 0.9 and weight decay 1e-4, dividing the
learning rate by 10 at fixed iterations (He et al. 2015, sec. 3.4 and 4.2).
Everything here is driven by the optimisation keys of `resnet_jax/config/defaults.py`, validated
before anything is built (`resnet_jax.training.validation`).
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from resnet_jax.checks import check_choice

# Optimisation keys whose values may be traced arrays (`hparams`): the vectorised members of a sweep
# (resnet_jax.training.group_step) pass one value per member through `jax.vmap`, so the optimizer's
# state has the same tree as a solo run's and a member's checkpoint restores as an ordinary run.
TRACEABLE = ("learning_rate", "weight_decay", "momentum")
# lr_scaling="linear" (Goyal et al. 2017, sec. 2.1): learning_rate is the peak for a batch of 256
# images (their 0.1 for 256), and grows in proportion to batch_size.
LINEAR_SCALING_BATCH = 256
# What weight decay applies to (`weight_decay_mask`): conv and dense kernels only, or every parameter.
WEIGHT_DECAY_MASKS = ("kernels", "all")


def _value(config: ml_collections.ConfigDict, hparams: dict | None, key: str):
  """`hparams[key]` (a traced array, in a vectorised group) if given, else the config's float."""
  if hparams is not None and key in hparams:
    return hparams[key]
  return float(config[key])


# warmup_mode="error": the paper's ResNet-110 warm-up, "0.01 ... until the training error is below
# 80% (about 400 iterations), and then go back to 0.1" (sec. 4.2). The training error is a running
# average of each step's batch error, weight ERROR_EMA_DECAY per step (about the last 10 steps), and
# starts at 100%; warmup_steps caps the warm-up.
ERROR_EMA_DECAY = 0.9


class ErrorGateState(NamedTuple):
  """The error-gated warm-up's state (in the optimizer state, so it is checkpointed and resumes)."""
  count: jax.Array   # updates so far
  error: jax.Array   # running training error, in [0, 1]
  done: jax.Array    # the warm-up has ended: the schedule's lr from the next update on


def _gate(opt_state) -> ErrorGateState | None:
  found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(
      x, ErrorGateState)) if isinstance(x, ErrorGateState)]
  return found[0] if found else None


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            hparams: dict | None = None) -> optax.Schedule:
  """Returns the schedule (step, opt_state=None) -> lr; step 0 is the first update.

  `hparams` may hold a (traced) `learning_rate` that replaces the config's peak. Under
  warmup_mode="error" the warm-up's end is in the optimizer state: given `opt_state`, the lr is the
  warm-up's until then; without it, the schedule after the warm-up.
  """
  peak = _value(config, hparams, "learning_rate")
  if config.lr_scaling == "linear":
    # Linear scaling rule (Goyal et al. 2017, sec. 2.1): lr grows with the
    # batch, relative to the reference batch. Only the peak scales.
    peak *= config.batch_size / LINEAR_SCALING_BATCH
  boundaries = jnp.asarray(tuple(config.lr_decay_steps), dtype=jnp.int32)
  factor = float(config.lr_decay_factor)
  gated = config.warmup_mode == "error"
  warmup = 0 if gated else int(config.warmup_steps)  # a gated warm-up's length is not known ahead
  decay_steps = int(config.total_steps) - warmup
  warmup_lr = float(config.warmup_learning_rate)

  def schedule(step, opt_state=None):
    step = jnp.asarray(step)
    if config.lr_schedule == "step":
      # Boundaries count absolute updates, warm-up included: the paper divides
      # by 10 "at 32k and 48k iterations" (He et al. 2015, sec. 4.2).
      drops = jnp.sum(step[..., None] >= boundaries, axis=-1)
      lr = peak * factor**drops
    elif config.lr_schedule == "cosine":
      # Cosine decay to 0 after warm-up (Loshchilov & Hutter 2017, SGDR).
      t = jnp.clip(step - warmup, 0, decay_steps) / decay_steps
      lr = 0.5 * peak * (1.0 + jnp.cos(math.pi * t))
    elif config.lr_schedule == "linear":
      # Linear decay to 0 after warm-up: the best use of a short budget (Li et al. 2020, "Budgeted
      # Training: Rethinking Deep Neural Network Training Under Resource Constraints").
      t = jnp.clip(step - warmup, 0, decay_steps) / decay_steps
      lr = peak * (1.0 - t)
    else:
      lr = peak * jnp.ones_like(step, dtype=jnp.float32)
    if warmup > 0:
      if config.warmup_mode == "linear":
        # Gradual warm-up from 0 to the peak (Goyal et al. 2017, sec. 2.2).
        warm = peak * step / warmup
      else:
        # ResNet-110: 0.01 until training "warms up" (~400 iterations), then
        # back to 0.1 (He et al. 2015, sec. 4.2).
        warm = warmup_lr * jnp.ones_like(step, dtype=jnp.float32)
      lr = jnp.where(step < warmup, warm, lr)
    gate = _gate(opt_state) if gated and opt_state is not None else None
    if gate is not None:
      lr = jnp.where(gate.done, lr, warmup_lr)
    return jnp.asarray(lr, dtype=jnp.float32)

  return schedule


def scale_by_error_gated_lr(schedule, warmup_lr: float, threshold: float, max_steps: int
                            ) -> optax.GradientTransformationExtraArgs:
  """-lr * updates, with lr = `warmup_lr` until the running training error falls below `threshold`
  (or `max_steps` updates pass), `schedule(count)` after. The step passes each batch's error as
  `train_error`; the switch is decided inside the compiled step, so nothing recompiles."""

  def init(params):
    del params
    return ErrorGateState(count=jnp.zeros((), jnp.int32), error=jnp.ones((), jnp.float32),
                          done=jnp.zeros((), jnp.bool_))

  def update(updates, state, params=None, *, train_error=None, **extra):
    del params, extra
    lr = jnp.where(state.done, schedule(state.count), warmup_lr)
    updates = jax.tree_util.tree_map(lambda u: -lr * u, updates)
    error = state.error if train_error is None else (
        ERROR_EMA_DECAY * state.error + (1 - ERROR_EMA_DECAY) * train_error)
    done = state.done | (error < threshold) | (state.count + 1 >= max_steps)
    return updates, ErrorGateState(count=state.count + 1, error=error, done=done)

  return optax.GradientTransformationExtraArgs(init, update)


def _key_name(entry: Any) -> Any:
  # DictKey (dicts, FrozenDict) carries `.key`; GetAttrKey carries `.name`.
  return getattr(entry, "key", getattr(entry, "name", None))


def weight_decay_mask(params: Any, mode: str) -> Any:
  """Returns a pytree of bools like `params`: True where weight decay applies.

  Args:
    params: the parameter pytree (e.g. Flax `variables["params"]`).
    mode: "kernels" decays only leaves named `kernel` (conv and dense weights),
      sparing BN scale/bias and biases ("no bias decay", He et al. 2019, Bag
      of Tricks, sec. 3.1); "all" decays every parameter, as a plain global
      L2 weight decay does (He et al. 2015, sec. 3.4).
  """
  check_choice("weight_decay_mask", mode, WEIGHT_DECAY_MASKS)
  if mode == "all":
    return jax.tree_util.tree_map(lambda _: True, params)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: bool(path) and _key_name(path[-1]) == "kernel", params)


def backbone_mask(params: Any) -> Any:
  """True for every parameter outside the classifier `head` (the last dense layer): the backbone."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not (path and _key_name(path[0]) == "head"), params)


def create_optimizer(config: ml_collections.ConfigDict,
                     hparams: dict | None = None) -> optax.GradientTransformation:
  """Returns the chain [freeze] -> clip -> masked weight decay -> momentum with lr.

  `hparams` may hold (traced) values of the TRACEABLE keys that replace the config's; the chain and
  its state's tree are the same either way.
  """
  schedule = create_learning_rate_fn(config, hparams)
  transforms = []
  freeze = bool(config.freeze_backbone)
  if freeze:
    # Zero the backbone's gradients before anything else reads them: clipping then sees only the
    # head's, the momentum buffers stay 0, and every backbone update is exactly 0.
    transforms.append(optax.masked(optax.set_to_zero(), backbone_mask))
  if config.grad_clip_norm > 0:
    # Clip the raw loss gradient first, so the decay term is never clipped.
    transforms.append(optax.clip_by_global_norm(config.grad_clip_norm))
  mode = config.weight_decay_mask

  def decay_mask(params):
    mask = weight_decay_mask(params, mode)
    if freeze:  # frozen parameters must not shrink either
      mask = jax.tree_util.tree_map(lambda m, b: m and not b, mask, backbone_mask(params))
    return mask

  # L2 decay added to the gradient (not the loss), so it shares the momentum
  # buffer exactly as in Caffe's SGD solver (He et al. 2015, sec. 3.4).
  transforms.append(optax.add_decayed_weights(_value(config, hparams, "weight_decay"), mask=decay_mask))
  trace = optax.trace(decay=_value(config, hparams, "momentum"), nesterov=config.nesterov)
  if config.warmup_mode == "error":
    scale = scale_by_error_gated_lr(schedule, float(config.warmup_learning_rate),
                                    float(config.warmup_error_threshold), int(config.warmup_steps))
  else:
    scale = optax.scale_by_learning_rate(schedule)
  if config.momentum_style == "optax":
    # Exactly `optax.sgd`: v = m v + g; w -= lr v.
    transforms += [trace, scale]
  else:
    # Caffe: v = m v + lr g; w -= v. The lr is baked into the buffer, so old
    # momentum keeps the old lr for a while after a drop.
    transforms += [scale, trace]
  return optax.chain(*transforms)
