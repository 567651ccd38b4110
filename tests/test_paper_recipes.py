"""The paper's recipes exactly: ImageNet's PCA colour augmentation, option A/B/C shortcuts for Tables
2-3, multi-scale testing for Tables 4-5, and ResNet-110's warm-up until the training error is below
80% (sec. 3.3, 3.4, 4.2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import config as config_lib
from resnet_jax import data, models
from resnet_jax.data import augment as aug
from resnet_jax.data import tfds_source
from resnet_jax.models import flops
from resnet_jax.pretrained import convert
from resnet_jax.run import metrics_log
from resnet_jax.training import loop, optim
from resnet_jax.training import step as step_lib
from tests.helpers import small_config


def test_pca_offsets_are_alexnets_lighting_written_out():
  rng = np.random.default_rng(0)
  alpha = rng.normal(0, 0.1, (5, 3))
  eigval, eigvec = np.array(aug.PCA_EIGVAL), np.array(aug.PCA_EIGVEC)
  for b in range(5):  # Krizhevsky et al. 2012: [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T, eigenvectors as columns
    want = sum(eigvec[:, i] * alpha[b, i] * eigval[i] for i in range(3))
    np.testing.assert_allclose(aug.pca_offsets(alpha)[b], want, atol=1e-12)
  # The eigenvectors are orthonormal (they are the covariance's).
  np.testing.assert_allclose(eigvec.T @ eigvec, np.eye(3), atol=2e-4)


def test_pca_colour_augmentation_in_the_imagenet_pipeline(imagenet_data_dir):
  _, data_dir = imagenet_data_dir
  plain = tfds_source.TfdsDataset("imagenet2012", data_dir, augment="scale", image_size=32)
  lit = tfds_source.TfdsDataset("imagenet2012", data_dir, augment="scale", image_size=32,
                                color_std=0.1)
  a, b = plain.train_batch(0, 1, 8), lit.train_batch(0, 1, 8)
  np.testing.assert_array_equal(a["label"], b["label"])  # the same examples and crops ...
  idx, params = tfds_source.sampling.batch_plan(0, 1, 8, lit.train_size, "scale", 0.1)
  raw = lit.decode(lit.records(idx), params, train=True).astype(np.float64) / 255
  # ... with every pixel of image i shifted by its offset, then normalised (a NumPy reference).
  shifted = raw + aug.pca_offsets(params["alpha"])[:, None, None, :]
  want = (shifted - lit.normalizer.mean) / (1 if lit.normalizer.std is None else lit.normalizer.std)
  np.testing.assert_allclose(b["image"], want, atol=1e-5)
  assert not np.allclose(a["image"], b["image"])
  # Turning it on leaves the other draws alone: crops and flips are those of the plain pipeline.
  _, plain_params = tfds_source.sampling.batch_plan(0, 1, 8, lit.train_size, "scale")
  for key in plain_params:
    np.testing.assert_array_equal(plain_params[key], params[key])


def _params(spec: str) -> int:
  config = config_lib.load(spec)
  from resnet_jax.training.trainer import build_model  # pylint: disable=g-import-not-at-top
  return flops.profile(build_model(config, 1000), 224)["params"]


def test_table2_and_table3_presets_have_the_parameters_the_tables_imply():
  # Table 2: option A, so each ResNet has exactly its plain twin's parameters.
  assert config_lib.load("configs/imagenet.py:resnet34").shortcut == "A"
  for depth in (18, 34):
    assert _params(f"configs/imagenet.py:resnet{depth}") == _params(f"configs/imagenet.py:plain{depth}")
  # Table 3: B adds projections where dimensions increase, C projects every shortcut.
  a, b, c = (_params(f"configs/imagenet.py:resnet34-{x}") for x in "ABC")
  assert b == 21_797_672  # torchvision's resnet34
  # A: B without its three projections (1x1 convs 64->128, 128->256, 256->512, and their BNs).
  assert a == _params("configs/imagenet.py:resnet34") == b - (64 * 128 + 128 * 256 + 256 * 512) - 2 * (
      128 + 256 + 512)
  assert a < b < c
  assert config_lib.load("configs/imagenet.py:resnet50").shortcut == "B"
  assert config_lib.load("configs/imagenet.py:resnet34-modern").shortcut == ""  # torchvision's (B)
  with pytest.raises(Exception, match="a plain net has no shortcuts"):
    config_lib.load("configs/imagenet.py:plain34-B")
  # Converting torchvision's weights takes its network whatever the preset says.
  assert convert.conversion_config("resnet34").shortcut == ""


def test_multiscale_testing_views_and_equality_with_one_scale(imagenet_data_dir):
  _, data_dir = imagenet_data_dir
  ds = tfds_source.TfdsDataset("imagenet2012", data_dir, image_size=32,
                               eval_layout=data.EvalLayout("multiscale", (16, 24)))
  first, second = ds.eval_batches(3)
  assert [x.shape for x in first["image"]] == [(3, 16, 16, 3), (3, 24, 24, 3)]
  assert second["mask"].tolist() == [1, 1, 0]
  model = models.get_model("resnet8", num_classes=1000)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
  state = step_lib.TrainState(step=0, params=variables["params"],
                              batch_stats=variables["batch_stats"], opt_state=None, rng=None)
  # One scale: exactly single-scale testing of the central squares at that size.
  one = tfds_source.TfdsDataset("imagenet2012", data_dir, image_size=32,
                                eval_layout=data.EvalLayout("multiscale", (24,)))
  batch = next(iter(one.eval_batches(3)))
  square = one.normalizer(one.square_crops(one.records([0, 1, 2], "eval"), 24))
  np.testing.assert_array_equal(batch["image"][0], square)
  sums = step_lib.eval_step(state, batch, model=model, layout=one.eval_layout)
  single = step_lib.eval_step(state, {**batch, "image": square}, model=model)
  np.testing.assert_allclose(float(sums["loss"]), float(single["loss"]), rtol=1e-5)
  assert float(sums["correct"]) == float(single["correct"])
  # Two scales: the softmax scores are averaged.
  sums = step_lib.eval_step(state, first, model=model, layout=ds.eval_layout)
  probs = np.mean([jax.nn.softmax(model.apply(variables, x, train=False)) for x in first["image"]], 0)
  np.testing.assert_allclose(float(sums["loss"]), -np.sum(np.log(
      probs[np.arange(3), first["label"]])), rtol=1e-5)


def test_error_gated_warmup_switches_when_the_running_error_falls_below_the_threshold(tmp_path):
  config = small_config(total_steps=30, warmup_mode="error", warmup_steps=25,
                        warmup_learning_rate=0.02, warmup_error_threshold=0.6, learning_rate=0.1,
                        lr_decay_steps=(), log_every_steps=30, checkpoint_every_steps=30)
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  rows = metrics_log.read_metrics(str(tmp_path / "run"))
  lrs = [r["train/learning_rate"] for r in rows]
  # The rule written out: a running error from 100%, weight 0.9 per step; the lr switches on the
  # step after the one whose running error fell below the threshold (rows[i] is update i).
  error, switch = 1.0, None
  for i, row in enumerate(rows):
    error = optim.ERROR_EMA_DECAY * error + (1 - optim.ERROR_EMA_DECAY) * (1 - row["train/accuracy"])
    if error < 0.6:
      switch = i + 1
      break
  assert switch is not None and 1 < switch < 25, switch  # it happened, before the cap
  assert lrs[:switch] == pytest.approx([0.02] * switch)
  assert lrs[switch:] == pytest.approx([0.1] * (len(lrs) - switch))
  # The preset: ResNet-110 holds 0.01 until the error is below 80%, at most 2,000 steps.
  preset = config_lib.load("configs/cifar10.py:resnet110")
  assert (preset.warmup_mode, preset.warmup_learning_rate, preset.warmup_error_threshold) == (
      "error", 0.01, 0.8)
