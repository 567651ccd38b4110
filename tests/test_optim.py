"""Tests of resnet_jax.optim: schedules, the optimizer chain and validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax.config import default_config
from resnet_jax.run.errors import ConfigError
from resnet_jax.training import optim, validation


def _config(**overrides):
  config = default_config()
  config.update(overrides)
  return config


def _lr(config, step):
  return float(optim.create_learning_rate_fn(config)(step))


def _params():
  rng = np.random.default_rng(0)
  return {
      "conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
      "bn": {"scale": rng.normal(size=(4,)).astype(np.float32),
             "bias": rng.normal(size=(4,)).astype(np.float32)},
      "dense": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                "bias": rng.normal(size=(3,)).astype(np.float32)},
  }


def _grads(num_steps, params, scale=1.0):
  rng = np.random.default_rng(1)
  return [jax.tree_util.tree_map(
      lambda p: (scale * rng.normal(size=p.shape)).astype(np.float32), params)
          for _ in range(num_steps)]


def _run_optax(config, grads, tx=None):
  """Applies `tx` (default create_optimizer(config)) under jit; params/step."""
  tx = tx or optim.create_optimizer(config)
  params = jax.tree_util.tree_map(jnp.asarray, _params())
  state = tx.init(params)

  @jax.jit
  def step(params, state, g):
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  history = []
  for g in grads:
    params, state = step(params, state, g)
    history.append(jax.tree_util.tree_map(np.asarray, params))
  return history


def _run_numpy(config, grads, style="optax"):
  """Hand-written SGD-momentum (He et al. 2015, sec. 3.4) in numpy."""
  lr_fn = optim.create_learning_rate_fn(config)
  m, wd = config.momentum, config.weight_decay
  params = _params()
  decay = {k: {n: (n == "kernel" or config.weight_decay_mask == "all")
               for n in v} for k, v in params.items()}
  buf = {k: {n: np.zeros_like(x) for n, x in v.items()}
         for k, v in params.items()}
  history = []
  for t, g in enumerate(grads):
    lr = float(lr_fn(t))
    for k in params:
      for n in params[k]:
        w = params[k][n].astype(np.float64)
        d = g[k][n] + (wd * w if decay[k][n] else 0.0)
        if style == "optax":
          buf[k][n] = m * buf[k][n] + d
          step = d + m * buf[k][n] if config.nesterov else buf[k][n]
          params[k][n] = w - lr * step
        else:  # Caffe's SGDSolver::ComputeUpdateValue.
          buf[k][n] = m * buf[k][n] + lr * d
          params[k][n] = w - buf[k][n]
    history.append({k: dict(v) for k, v in params.items()})
  return history


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree_util.tree_map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


# --- Learning-rate schedules ---


def test_paper_cifar_step_schedule_at_boundaries():
  # He et al. 2015, sec. 4.2: 0.1, divided by 10 at 32k and 48k iterations.
  config = _config(learning_rate=0.1, lr_schedule="step",
                   lr_decay_steps=(32000, 48000), warmup_steps=0)
  expected = {0: 0.1, 31999: 0.1, 32000: 0.01, 47999: 0.01, 48000: 0.001,
              63999: 0.001}
  for step, lr in expected.items():
    assert _lr(config, step) == pytest.approx(lr, rel=1e-6), step


def test_schedule_is_jittable_and_takes_arrays():
  fn = optim.create_learning_rate_fn(_config())
  steps = jnp.array([0, 32000, 48000], dtype=jnp.int32)
  np.testing.assert_allclose(jax.jit(fn)(steps), [0.1, 0.01, 0.001], rtol=1e-6)
  assert float(jax.jit(fn)(jnp.int32(31999))) == pytest.approx(0.1)


def test_constant_warmup_resnet110():
  # He et al. 2015, sec. 4.2: 0.01 for ~400 iterations, then back to 0.1.
  config = _config(warmup_steps=400, warmup_mode="constant",
                   warmup_learning_rate=0.01)
  for step in (0, 200, 399):
    assert _lr(config, step) == pytest.approx(0.01), step
  for step in (400, 31999):
    assert _lr(config, step) == pytest.approx(0.1), step
  assert _lr(config, 32000) == pytest.approx(0.01)


def test_linear_warmup_then_cosine():
  config = _config(learning_rate=0.2, lr_schedule="cosine", warmup_steps=100,
                   warmup_mode="linear", total_steps=1100)
  assert _lr(config, 0) == pytest.approx(0.0, abs=1e-9)
  assert _lr(config, 50) == pytest.approx(0.1)
  assert _lr(config, 100) == pytest.approx(0.2)
  assert _lr(config, 600) == pytest.approx(0.1)  # half way through the decay
  assert _lr(config, 1100) == pytest.approx(0.0, abs=1e-9)
  assert _lr(config, 5000) == pytest.approx(0.0, abs=1e-9)


def test_linear_warmup_then_linear_decay_to_zero():
  config = _config(learning_rate=0.2, lr_schedule="linear", warmup_steps=100,
                   warmup_mode="linear", total_steps=1100, lr_decay_steps=())
  assert _lr(config, 0) == pytest.approx(0.0, abs=1e-9)
  assert _lr(config, 50) == pytest.approx(0.1)
  assert _lr(config, 100) == pytest.approx(0.2)
  assert _lr(config, 350) == pytest.approx(0.15)  # a quarter of the decay
  assert _lr(config, 600) == pytest.approx(0.1)
  assert _lr(config, 1099) == pytest.approx(0.2 / 1000, rel=1e-4)
  assert _lr(config, 1100) == pytest.approx(0.0, abs=1e-9)


def test_constant_schedule():
  config = _config(learning_rate=0.05, lr_schedule="constant")
  assert _lr(config, 0) == pytest.approx(0.05)
  assert _lr(config, 60000) == pytest.approx(0.05)


def test_linear_scaling_rule_scales_peak_only():
  # Goyal et al. 2017: lr = 0.1 * batch / 256.
  config = _config(batch_size=1024, lr_scaling="linear", warmup_steps=10,
                   warmup_mode="constant", warmup_learning_rate=0.01)
  assert _lr(config, 0) == pytest.approx(0.01)
  assert _lr(config, 10) == pytest.approx(0.4)
  assert _lr(_config(batch_size=1024), 10) == pytest.approx(0.1)


# --- Weight-decay mask ---


def test_weight_decay_mask():
  params = _params()
  kernels = optim.weight_decay_mask(params, "kernels")
  assert kernels == {"conv": {"kernel": True},
                     "bn": {"scale": False, "bias": False},
                     "dense": {"kernel": True, "bias": False}}
  assert all(jax.tree_util.tree_leaves(optim.weight_decay_mask(params, "all")))


def test_weight_decay_mask_unknown_mode():
  with pytest.raises(ValueError,
                     match=r"weight_decay_mask='bogus'.*'kernels'"):
    optim.weight_decay_mask(_params(), "bogus")


# --- The optimizer chain against hand-written updates ---


@pytest.mark.parametrize("mask", ["kernels", "all"])
def test_chain_matches_handwritten_sgd(mask):
  config = _config(learning_rate=0.1, lr_decay_steps=(2, 4), total_steps=6,
                   weight_decay=0.05, weight_decay_mask=mask)
  grads = _grads(6, _params())
  _assert_trees_close(_run_optax(config, grads), _run_numpy(config, grads))


def test_mask_changes_the_result():
  grads = _grads(3, _params())
  kernels = _run_optax(_config(weight_decay=0.05), grads)[-1]
  everything = _run_optax(_config(weight_decay=0.05, weight_decay_mask="all"),
                          grads)[-1]
  np.testing.assert_array_equal(kernels["conv"]["kernel"],
                                everything["conv"]["kernel"])
  assert not np.allclose(kernels["bn"]["scale"], everything["bn"]["scale"])


def test_optax_style_is_exactly_optax_sgd():
  config = _config(lr_decay_steps=(2, 4), total_steps=6, weight_decay=0.0)
  grads = _grads(6, _params())
  reference = optax.sgd(optim.create_learning_rate_fn(config), momentum=0.9)
  expected = _run_optax(config, grads, tx=reference)
  _assert_trees_close(_run_optax(config, grads), expected, rtol=0, atol=0)


def test_nesterov_matches_handwritten():
  config = _config(nesterov=True, lr_decay_steps=(3,), total_steps=6)
  grads = _grads(6, _params())
  got = _run_optax(config, grads)
  _assert_trees_close(got, _run_numpy(config, grads))
  heavy_ball = _run_numpy(_config(lr_decay_steps=(3,), total_steps=6), grads)
  assert not np.allclose(got[-1]["conv"]["kernel"],
                         heavy_ball[-1]["conv"]["kernel"])


def test_caffe_style_across_lr_drop():
  drop = 3
  config = _config(momentum_style="caffe", lr_decay_steps=(drop,),
                   total_steps=6, weight_decay=0.01)
  grads = _grads(6, _params())
  caffe = _run_optax(config, grads)
  _assert_trees_close(caffe, _run_numpy(config, grads, style="caffe"))
  # With a constant lr the two orderings agree; right after the drop Caffe's
  # buffer still holds lr=0.1 momentum while optax rescales it by 0.01.
  plain = _run_optax(_config(lr_decay_steps=(drop,), total_steps=6,
                             weight_decay=0.01), grads)
  _assert_trees_close(caffe[:drop], plain[:drop])
  assert not np.allclose(caffe[drop]["conv"]["kernel"],
                         plain[drop]["conv"]["kernel"], rtol=1e-3)


def test_gradient_clipping_before_weight_decay():
  config = _config(grad_clip_norm=1.0, momentum=0.0, lr_schedule="constant",
                   learning_rate=1.0, weight_decay=0.1)
  params = _params()
  grads = _grads(1, params, scale=100.0)[0]
  tx = optim.create_optimizer(config)
  updates, _ = tx.update(grads, tx.init(params), params)
  norm = optax.tree.norm(grads)
  mask = optim.weight_decay_mask(params, "kernels")
  expected = jax.tree_util.tree_map(
      lambda g, w, d: -(g / norm + (0.1 * w if d else 0.0)),
      grads, params, mask)
  _assert_trees_close(updates, expected)
  # Without the clip the update is the raw (huge) gradient.
  unclipped = optim.create_optimizer(
      _config(**{**config, "grad_clip_norm": 0.0}))
  raw, _ = unclipped.update(grads, unclipped.init(params), params)
  assert float(optax.tree.norm(raw)) > 50.0


# --- Validation ---


@pytest.mark.parametrize("key,value", [
    ("lr_schedule", "poly"),
    ("warmup_mode", "exponential"),
    ("lr_scaling", "sqrt"),
    ("momentum_style", "pytorch"),
    ("weight_decay_mask", "biases"),
])
def test_unknown_choice_raises(key, value):
  # Checked once, before anything is built (resnet_jax.training.validation).
  with pytest.raises(ConfigError) as info:
    validation.validate(_config(**{key: value}))
  message = str(info.value)
  assert key in message and repr(value) in message
  assert all(repr(c) in message for c in validation.CHOICES[key])


@pytest.mark.parametrize("overrides,needle", [
    ({"lr_decay_steps": (48000, 32000)}, "lr_decay_steps"),
    ({"lr_decay_steps": (32000, 32000)}, "lr_decay_steps"),
    ({"lr_decay_steps": (-1, 32000)}, "lr_decay_steps"),
    ({"warmup_steps": 100, "total_steps": 50}, "warmup_steps"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"grad_clip_norm": -1.0}, "grad_clip_norm"),
])
def test_bad_values_raise(overrides, needle):
  with pytest.raises(ConfigError, match=needle):
    validation.validate(_config(**overrides))
