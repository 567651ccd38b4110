"""Model zoo: counts against the paper and torchvision, block semantics, shapes and dtypes."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import cli, models
from resnet_jax.models import flops, layers
from resnet_jax.models.layers import BatchNorm, adaptive_avg_pool, pad_shortcut

# He et al. 2015, Table 6 (CIFAR, option A) and torchvision's counts (ImageNet, option B, 1000 classes).
PARAMS = {
    "resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
    "resnet110": 1_727_962, "resnet1202": 19_421_274,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
}
# Table 1 multiply-adds at 224 px, with the paper's v1 stride placement.
PAPER_MACS = {"resnet18": 1.8e9, "resnet34": 3.6e9, "resnet50": 3.8e9, "resnet101": 7.6e9,
              "resnet152": 11.3e9, "vgg19": 19.6e9}


def _param_tree(name, **kw):
  model = models.get_model(name, **kw)
  size = models.default_image_size(name)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda r, x: model.init(r, x, train=False), jax.random.key(0), x)["params"]


def _size(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts(name):
  assert flops.count_params(models.get_model(name), models.default_image_size(name)) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(PAPER_MACS))
def test_flops_match_table_1(name):
  kw = {} if name == "vgg19" else {"stride_placement": "v1"}
  macs = flops.count_macs(models.get_model(name, **kw), 224)
  assert abs(macs / PAPER_MACS[name] - 1) <= 0.05, f"{name}: {macs:.3e} vs {PAPER_MACS[name]:.3e}"


def test_v15_strides_the_3x3_and_costs_more():
  v1 = flops.count_macs(models.get_model("resnet50", stride_placement="v1"), 224)
  v15 = flops.count_macs(models.get_model("resnet50"), 224)
  assert 4.0e9 < v15 < 4.2e9 and v15 > v1  # torchvision reports 4.1e9 for its v1.5 ResNet-50


@pytest.mark.parametrize("depth", [18, 50, 20])
def test_plain_net_is_residual_net_minus_projections(depth):
  res, plain = _param_tree(f"resnet{depth}"), _param_tree(f"plain{depth}")
  proj = {f"{blk}/{k}": v for blk, sub in res.items() if isinstance(sub, dict)
          for k, v in sub.items() if k.startswith("proj_")}
  assert _size(plain) == _size(res) - _size(proj)
  if depth == 20:
    assert not proj  # option A has no parameters: CIFAR twins have equal counts (paper, sec. 4.2)
  flat_plain = jax.tree_util.tree_flatten_with_path(plain)[0]
  assert not any("proj_" in jax.tree_util.keystr(p) for p, _ in flat_plain)


def _block_io(block, x, variables=None, train=False):
  variables = variables or block.init(jax.random.key(1), x)
  out, state = block.apply(variables, x, mutable=["intermediates", "batch_stats"])
  return variables, out, state["intermediates"]["response"][-1]  # the last BN's output


def _norm(train=False):
  return lambda **kw: BatchNorm(use_running_average=not train, **kw)


def _conv():
  import functools  # pylint: disable=g-import-not-at-top
  return functools.partial(layers.conv, dtype=jnp.float32)


def test_residual_adds_shortcut_after_last_bn_before_relu():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  block = models.ResidualBlock(16, conv=_conv(), norm=_norm())
  variables, out, response = _block_io(block, x)
  np.testing.assert_allclose(out, jax.nn.relu(response + x), atol=1e-6)
  _, plain_out, plain_resp = _block_io(models.PlainBlock(16, conv=_conv(), norm=_norm()), x, variables)
  np.testing.assert_allclose(plain_resp, response, atol=1e-6)  # same branch F ...
  np.testing.assert_allclose(plain_out, jax.nn.relu(response), atol=1e-6)  # ... and no shortcut path


def test_option_a_subsamples_and_zero_pads():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  block = models.ResidualBlock(32, conv=_conv(), norm=_norm(), strides=2, shortcut="A")
  variables, out, response = _block_io(block, x)
  assert "proj_conv" not in variables["params"]
  sc = jnp.concatenate([x[:, ::2, ::2], jnp.zeros((2, 4, 4, 16))], -1)
  np.testing.assert_allclose(out, jax.nn.relu(response + sc), atol=1e-6)
  np.testing.assert_array_equal(pad_shortcut(x, 16, 1), x)


@pytest.mark.parametrize("kind,expect_proj", [("B", False), ("C", True)])
def test_projection_options(kind, expect_proj):
  x = jnp.ones((1, 8, 8, 16))
  same = models.ResidualBlock(16, conv=_conv(), norm=_norm(), shortcut=kind).init(jax.random.key(0), x)
  grow = models.ResidualBlock(32, conv=_conv(), norm=_norm(), strides=2, shortcut=kind).init(
      jax.random.key(0), x)
  assert ("proj_conv" in same["params"]) == expect_proj
  assert "proj_conv" in grow["params"] and "proj_bn" in grow["params"]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("block_cls,filters", [(models.ResidualBlock, 16), (models.BottleneckBlock, 4)])
def test_zero_init_block_is_identity_plus_relu(block_cls, filters, train):
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 16))
  block = block_cls(filters, conv=_conv(), norm=_norm(train), zero_init_residual=True)
  _, out, _ = _block_io(block, x)
  np.testing.assert_allclose(out, jax.nn.relu(x), atol=1e-6)


def test_bottleneck_stride_placement():
  x = jnp.ones((1, 8, 8, 16))
  for placement, strided in (("v1", "conv1"), ("v1.5", "conv2")):
    block = models.BottleneckBlock(8, conv=_conv(), norm=_norm(), strides=2, stride_placement=placement)
    out, state = block.apply(block.init(jax.random.key(0), x), x, capture_intermediates=True,
                             mutable=["intermediates"])
    assert out.shape == (1, 4, 4, 32)
    assert state["intermediates"][strided]["__call__"][0].shape[1] == 4
    other = "conv2" if strided == "conv1" else "conv1"
    assert state["intermediates"][other]["__call__"][0].shape[1] == (8 if strided == "conv2" else 4)


def test_group_batch_norm_normalises_each_group():
  x = jax.random.normal(jax.random.key(0), (4, 3, 3, 5)) * 3 + 1
  bn = BatchNorm(group_size=2)
  variables = bn.init(jax.random.key(0), x)
  y, _ = bn.apply(variables, x, mutable=["batch_stats"])
  for half in (slice(0, 2), slice(2, 4)):
    g = x[half]
    ref = (g - g.mean((0, 1, 2))) / jnp.sqrt(g.var((0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(y[half], ref, atol=1e-4)
  with pytest.raises(ValueError, match="bn_group_size=3"):
    BatchNorm(group_size=3).apply(variables, x, mutable=["batch_stats"])


def test_adaptive_avg_pool():
  x = jax.random.normal(jax.random.key(0), (2, 14, 14, 3))
  np.testing.assert_allclose(adaptive_avg_pool(x, 7), x.reshape(2, 7, 2, 7, 2, 3).mean((2, 4)), atol=1e-6)
  assert adaptive_avg_pool(jnp.ones((1, 1, 1, 2)), 7).shape == (1, 7, 7, 2)  # torchvision replicates


# XLA compiles deep nets slowly on CPU. The fast tier runs a real forward of the smallest net of
# each block type and traces every other net's shapes (jax.eval_shape); `pytest -m e2e` runs every
# forward for real, and traces the 1202-layer nets unrolled (their scanned layout is traced here).
FORWARD_FAST = ("resnet8", "plain8", "resnet18", "resnet50")
HUGE = ("resnet1202", "plain1202")


def _forward_params():
  return [n if n in FORWARD_FAST else pytest.param(n, marks=pytest.mark.e2e)
          for n in models.list_models() if n not in HUGE]


@pytest.mark.parametrize("name", _forward_params())
def test_output_shape_and_dtype(name):
  size = 8 if models.default_image_size(name) == 32 else 32  # small inputs keep CPU tests fast
  model = models.get_model(name, num_classes=7)
  x = jnp.ones((2, size, size, 3))
  # One compile: init runs the training-mode forward and returns its logits too.
  logits, variables = jax.jit(lambda r, x: model.init_with_output(r, x, train=True))(
      jax.random.key(0), x)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  assert {v.dtype for v in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name,scan", [(n, False) if n not in HUGE else pytest.param(
    n, False, marks=pytest.mark.e2e) for n in models.list_models()] + [(n, True) for n in HUGE])
def test_every_model_shapes_without_running(name, scan):
  model = models.get_model(name, num_classes=7, **({"scan_blocks": True} if scan else {}))
  size = 8 if models.default_image_size(name) == 32 else 32
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(lambda r, x: model.init(r, x, train=False), jax.random.key(0), x)
  out, _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
                          variables, x)
  assert out.shape == (2, 7) and out.dtype == jnp.float32
  assert {v.dtype for v in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
def test_preact_variant(name):
  model = models.get_model(name, preact=True, num_classes=3)
  x = jnp.ones((2, 16, 16, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  assert "final_bn" in variables["params"]
  assert model.apply(variables, x, train=False).shape == (2, 3)
  with pytest.raises(ValueError, match="zero_init_residual"):
    models.get_model(name, preact=True, zero_init_residual=True).init(jax.random.key(0), x)


def test_bfloat16_compute_keeps_float32_state():
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  f32, bf16 = models.get_model("resnet20"), models.get_model("resnet20", dtype=jnp.bfloat16)
  variables = f32.init(jax.random.key(0), x, train=False)
  ref, _ = f32.apply(variables, x, train=True, mutable=["batch_stats"])
  out, updates = bf16.apply(variables, x, train=True, mutable=["batch_stats"])
  assert out.dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(updates["batch_stats"]))
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(
      bf16.init(jax.random.key(0), x, train=False)["params"]))
  np.testing.assert_allclose(out, ref, atol=0.1 * float(jnp.abs(ref).max()) + 0.05)
  assert not np.allclose(out, ref, atol=1e-6)  # it really computed in bfloat16


def test_width_multiplier():
  assert _size(_param_tree("resnet20", width_multiplier=2.0)) > 3.5 * PARAMS["resnet20"]


def test_registry_errors():
  with pytest.raises(ValueError, match="valid names: resnet8, resnet20"):
    models.get_model("resnet21")
  with pytest.raises(ValueError, match="unknown option"):
    models.get_model("resnet20", widht_multiplier=2)
  with pytest.raises(ValueError, match="plain net"):
    models.get_model("plain20", shortcut="B")
  with pytest.raises(ValueError, match="shortcut='D'"):
    models.get_model("resnet20", shortcut="D").init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))
  assert len(models.list_models()) == 25


def test_import_does_not_pull_tensorflow():
  code = ("import sys, resnet_jax, resnet_jax.models; "
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_models_lists_counts(capsys):
  assert cli.main(["models", "--json", "resnet20", "resnet18"]) == 0
  rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert [(r["model"], r["params"]) for r in rows] == [("resnet20", 269_722), ("resnet18", 11_689_512)]
  assert rows[1]["macs"] == flops.count_macs(models.get_model("resnet18"), 224)
  assert cli.main(["models", "nope"]) == 2


def _loss_and_grads(model, variables, x, labels):
  def loss_fn(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels])
  return jax.value_and_grad(loss_fn)(variables["params"])


@pytest.mark.parametrize("name", ["resnet20", "plain20", pytest.param("resnet50", marks=pytest.mark.e2e)])
def test_scanned_blocks_have_the_unrolled_numerics(name):
  from resnet_jax.models import stages  # pylint: disable=g-import-not-at-top
  size = 8 if name.endswith("20") else 32
  x = jax.random.normal(jax.random.key(0), (4, size, size, 3))
  labels = jnp.array([0, 1, 2, 3])
  unrolled = models.get_model(name, num_classes=5)
  scanned = models.get_model(name, num_classes=5, scan_blocks=True)
  variables = unrolled.init(jax.random.key(1), x, train=False)
  converted = {k: stages.to_scanned(v) for k, v in variables.items()}
  assert jax.tree_util.tree_structure(converted) == jax.tree_util.tree_structure(
      jax.eval_shape(lambda: scanned.init(jax.random.key(1), x, train=False)))
  loss_u, grads_u = _loss_and_grads(unrolled, variables, x, labels)
  loss_s, grads_s = _loss_and_grads(scanned, converted, x, labels)
  np.testing.assert_allclose(loss_s, loss_u, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(stages.to_unrolled(grads_s)),
                  jax.tree_util.tree_leaves(grads_u)):
    # Same math, different fusion order: compare to float32 rounding of the array's scale (ResNet-50's
    # BN on 4 examples at 1x1 spatial size gives gradients of ~200 beside ones of ~0.2).
    np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, float(jnp.abs(b).max())), rtol=1e-4)
  # Per-block gradient norms (train metrics) are the same in both layouts, without unstacking.
  from resnet_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  norms_u, norms_s = step_lib.block_grad_norms(grads_u), step_lib.block_grad_norms(grads_s)
  assert sorted(norms_s) == sorted(norms_u) and "stage1_block3" in norms_s and "head" in norms_s
  for key, value in norms_u.items():
    np.testing.assert_allclose(norms_s[key], value, rtol=1e-4, err_msg=key)
  np.testing.assert_allclose(norms_u["stage1_block2"], optax.tree.norm(grads_u["stage1_block2"]),
                             rtol=1e-6)
  round_trip = {k: stages.to_unrolled(v) for k, v in converted.items()}
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool((a == b).all()), round_trip,
                                                       variables))


def test_remat_blocks_have_the_plain_numerics():
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  labels = jnp.array([0, 1, 2, 3])
  plain, remat = models.get_model("resnet20"), models.get_model("resnet20", remat_blocks=True)
  variables = plain.init(jax.random.key(1), x, train=False)
  loss_p, grads_p = _loss_and_grads(plain, variables, x, labels)
  loss_r, grads_r = _loss_and_grads(remat, variables, x, labels)
  np.testing.assert_allclose(loss_r, loss_p, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(grads_r), jax.tree_util.tree_leaves(grads_p)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
  def primitives(model):
    jaxpr = jax.make_jaxpr(lambda p: _loss_and_grads(model, {**variables, "params": p}, x, labels))(
        variables["params"])
    return str(jaxpr)
  # One rematerialised region (jax.checkpoint's `remat2` primitive) per block, none without the option.
  assert primitives(remat).count("remat2[") >= 9 and "remat2[" not in primitives(plain)


@pytest.mark.parametrize("name, fan_in", [("resnet20", 64), ("resnet50", 2048)])
def test_head_is_initialised_as_torchvision(name, fan_in):
  """The classifier is PyTorch's default nn.Linear init: U(+-1/sqrt(fan_in)) weights and biases."""
  model = models.get_model(name)
  size = 32 if name == "resnet20" else 64
  head = jax.jit(lambda r: model.init(r, jnp.zeros((1, size, size, 3)), train=False))(
      jax.random.key(3))["params"]["head"]
  bound = 1 / np.sqrt(fan_in)
  kernel, bias = np.asarray(head["kernel"]), np.asarray(head["bias"])
  assert kernel.shape[0] == fan_in
  for x in (kernel, bias):
    assert np.abs(x).max() <= bound and np.abs(x).max() > 0.9 * bound
  # A uniform on [-b, b] has std b / sqrt(3) (Flax's LeCun normal default would give b).
  np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.1 if kernel.size < 1000 else 0.01)
  assert abs(kernel.mean()) < 0.1 * bound


def test_vgg_dense_layers_are_initialised_as_torchvision():
  model = models.get_model("vgg19", num_classes=10, width_multiplier=1 / 16, classifier_width=256)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
  for name in ("fc1", "fc2", "head"):
    kernel, bias = np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])
    np.testing.assert_allclose(kernel.std(), 0.01, rtol=0.1)
    assert not bias.any()


# --- The models as backbones: inference by default, pooled features, stage outputs. ---


@pytest.fixture(scope="module")
def resnet8_variables():
  model = models.get_model("resnet8", num_classes=5)
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  variables = model.init(jax.random.key(1), x)
  # Running statistics that differ from the batch's, so inference and training modes differ.
  variables["batch_stats"] = jax.tree_util.tree_map(lambda s: s + 0.3, variables["batch_stats"])
  return model, variables, x


def _same(a, b):
  return jax.tree_util.tree_all(jax.tree_util.tree_map(lambda u, v: bool((u == v).all()), a, b))


def test_train_defaults_to_inference_unless_batch_stats_are_mutable(resnet8_variables):
  model, variables, x = resnet8_variables
  inference = model.apply(variables, x, train=False)
  training, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(inference, training, atol=1e-3)
  assert _same(model.apply(variables, x), inference)  # plain apply: inference, no Flax error
  default, default_updates = model.apply(variables, x, mutable=["batch_stats"])
  assert _same(default, training) and _same(default_updates, updates)
  # Only "intermediates" mutable (the Fig. 7 responses): still inference.
  sown, _ = model.apply(variables, x, mutable=["intermediates"])
  assert _same(sown, inference)
  # init runs the training-mode forward, as before train=None existed.
  out_default, _ = model.init_with_output(jax.random.key(1), x)
  out_train, _ = model.init_with_output(jax.random.key(1), x, train=True)
  assert _same(out_default, out_train)


def test_training_mode_without_mutable_batch_stats_says_what_to_pass(resnet8_variables):
  model, variables, x = resnet8_variables
  with pytest.raises(ValueError, match=r"stem_bn: .*mutable=\['batch_stats'\].*train=False"):
    model.apply(variables, x, train=True)


def test_backbone_returns_pooled_features_and_stage_outputs(resnet8_variables):
  model, variables, x = resnet8_variables
  backbone = models.get_model("resnet8", num_classes=0)
  body = {"params": {k: v for k, v in variables["params"].items() if k != "head"},
          "batch_stats": variables["batch_stats"]}
  # The same parameter names without the head: a classifier checkpoint's backbone loads as is.
  assert jax.tree_util.tree_structure(jax.eval_shape(lambda: backbone.init(jax.random.key(1), x))) == \
      jax.tree_util.tree_structure(body)
  pooled = backbone.apply(body, x)
  feats = model.apply(variables, x, return_features=True)
  assert sorted(feats) == ["logits", "pooled", "stage1", "stage2", "stage3"]
  assert [feats[f"stage{i}"].shape for i in (1, 2, 3)] == [(4, 16, 16, 16), (4, 8, 8, 32), (4, 4, 4, 64)]
  # Written out by hand: pooled = spatial mean of the last stage; logits = pooled @ kernel + bias.
  np.testing.assert_allclose(pooled, feats["stage3"].mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)
  head = variables["params"]["head"]
  np.testing.assert_allclose(model.apply(variables, x), pooled @ head["kernel"] + head["bias"],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(feats["logits"], model.apply(variables, x))
  assert set(backbone.apply(body, x, return_features=True)) == {"pooled", "stage1", "stage2", "stage3"}
  with pytest.raises(ValueError, match="num_classes=-1"):
    models.get_model("resnet8", num_classes=-1).init(jax.random.key(0), x)


def test_imagenet_backbone_stage_outputs_are_c2_to_c5():
  model = models.get_model("resnet50", num_classes=0)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(lambda r, x: model.init(r, x), jax.random.key(0), x)
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), variables, x)
  # Strides 4, 8, 16, 32; bottleneck widths 256 ... 2048.
  assert {k: v.shape for k, v in feats.items()} == {
      "stage1": (2, 16, 16, 256), "stage2": (2, 8, 8, 512), "stage3": (2, 4, 4, 1024),
      "stage4": (2, 2, 2, 2048), "pooled": (2, 2048)}
  vgg = models.get_model("vgg19", num_classes=0, width_multiplier=1 / 16, classifier_width=64)
  out = jax.eval_shape(lambda r, x: vgg.init_with_output(r, x)[0], jax.random.key(0), x)
  assert out.shape == (2, 64) and out.dtype == jnp.float32
