"""Fine-tuning: init_from seeds a new run (new head where the classes differ), frozen BN statistics and
a frozen backbone, and the fine-tuning run resumes from its own checkpoints.

End to end on the digits (8x8x1, 10 classes) from a ResNet-8 trained briefly on synthetic 8x8x1
images of 4 classes.
"""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import config as config_lib
from resnet_jax import models
from resnet_jax.config import default_config
from resnet_jax.run.errors import ConfigError, WorkdirError
from resnet_jax.training import checkpoints, loop, optim
from resnet_jax.training import step as step_lib
from resnet_jax.training import trainer as trainer_lib
from tests.helpers import small_config


def _restore(workdir):
  _, state = trainer_lib.restore(workdir)
  return jax.tree_util.tree_map(np.asarray, state)


def _without_head(params):
  return {k: v for k, v in params.items() if k != "head"}


def _equal(a, b) -> bool:
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """The workdir of a short synthetic run whose images have the digits' shape, with 4 classes."""
  workdir = str(tmp_path_factory.mktemp("source"))
  loop.train_and_evaluate(small_config(dataset="synthetic", image_size=8, synthetic_channels=1,
                                       num_classes=4, total_steps=4, num_devices=2), workdir)
  return workdir


def _finetune(variant: str, init_from: str, **overrides):
  """configs/finetune.py with the test's small run settings, as the command line would set them."""
  values = {"init_from": init_from, "model": "resnet8", "dataset": "digits", "batch_size": "32",
            "total_steps": "4", "log_every_steps": "2", "eval_every_steps": "0",
            "checkpoint_every_steps": "2", "keep_checkpoints": "10", "num_devices": "2"}
  values.update({k: str(v) for k, v in overrides.items()})
  return config_lib.load(f"configs/finetune.py{':' + variant if variant else ''}", values)


def test_linear_probe_on_digits_trains_only_the_new_head(source, tmp_path):
  src = _restore(source)
  assert src.params["head"]["kernel"].shape == (64, 4)
  config = _finetune("linear", source)
  assert config.freeze_backbone and config.freeze_bn_stats
  trainer = trainer_lib.Trainer(config)
  seeded = trainer.first_state()
  assert _equal(_without_head(seeded.params), _without_head(src.params))
  assert _equal(seeded.batch_stats, src.batch_stats)
  assert seeded.params["head"]["kernel"].shape == (64, 10)  # a new head for the digits' 10 classes
  assert int(seeded.step) == 0 and not any(  # the optimizer starts afresh
      np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(seeded.opt_state))

  workdir = str(tmp_path / "probe")
  last = loop.train_and_evaluate(config, workdir)
  assert last["step"] == 4 and np.isfinite(last["train/loss"])
  done = _restore(workdir)
  assert _equal(_without_head(done.params), _without_head(src.params))  # bit-identical backbone
  assert _equal(done.batch_stats, src.batch_stats)  # BN statistics frozen
  assert not np.array_equal(done.params["head"]["kernel"], np.asarray(seeded.params["head"]["kernel"]))


def test_full_finetune_trains_the_backbone_with_frozen_bn_statistics(source, tmp_path):
  workdir = str(tmp_path / "full")
  loop.train_and_evaluate(_finetune("", source), workdir)
  src, done = _restore(source), _restore(workdir)
  assert _equal(done.batch_stats, src.batch_stats)
  assert not np.array_equal(done.params["stage1_block1"]["conv1"]["kernel"],
                            src.params["stage1_block1"]["conv1"]["kernel"])


def test_finetune_resumes_from_its_own_checkpoints(source, tmp_path):
  """Stopped at step 2 and re-run after its source is gone: identical to an uninterrupted run."""
  copy = str(tmp_path / "source_copy")
  shutil.copytree(source, copy)
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  # A constant rate, so the first part's shorter total_steps does not change the schedule.
  loop.train_and_evaluate(_finetune("", source, lr_schedule="constant"), whole)
  loop.train_and_evaluate(_finetune("", copy, lr_schedule="constant", total_steps=2), parts)
  shutil.rmtree(copy)  # resuming must not read init_from again
  loop.train_and_evaluate(_finetune("", copy, lr_schedule="constant"), parts)
  a, b = _restore(whole), _restore(parts)
  assert int(a.step) == int(b.step) == 4
  assert _equal(a.params, b.params) and _equal(a.batch_stats, b.batch_stats)


def test_same_class_count_keeps_the_head_unless_a_new_one_is_asked_for(source):
  src = _restore(source)
  def seeded(**overrides):
    config = small_config(dataset="synthetic", image_size=8, synthetic_channels=1, num_classes=4,
                          num_devices=1, init_from=source, **overrides)
    return trainer_lib.Trainer(config).first_state().params["head"]["kernel"]
  assert np.array_equal(seeded(), src.params["head"]["kernel"])
  fresh = trainer_lib.Trainer(small_config(dataset="synthetic", image_size=8, synthetic_channels=1,
                                           num_classes=4, num_devices=1)).init_state()
  assert np.array_equal(seeded(init_new_head=True), fresh.params["head"]["kernel"])
  # A scanned run starts from the unrolled source (layouts are converted).
  scanned = small_config(dataset="synthetic", image_size=8, synthetic_channels=1, num_classes=4,
                         num_devices=1, init_from=source, scan_blocks=True)
  assert "stage1_block1" in trainer_lib.Trainer(scanned).first_state().params


def test_init_from_errors_name_the_problem(source, tmp_path):
  with pytest.raises(ConfigError, match="model='resnet8' network; this run has model='plain8'"):
    trainer_lib.Trainer(small_config(model="plain8", init_from=source)).first_state()
  with pytest.raises(WorkdirError, match="not the workdir of a run"):
    trainer_lib.Trainer(small_config(init_from=str(tmp_path / "nothing"))).first_state()
  assert not (tmp_path / "nothing").exists()  # nothing created in a wrong init_from
  with pytest.raises(ConfigError, match="stem_conv/kernel has shape \\(3, 3, 1, 16\\) there and "
                                       "\\(3, 3, 3, 16\\) here"):
    trainer_lib.Trainer(small_config(dataset="synthetic", image_size=8, num_classes=4,
                                     init_from=source)).first_state()
  with pytest.raises(ConfigError, match="set init_from"):
    trainer_lib.Trainer(small_config(freeze_bn_stats=True))
  with pytest.raises(ConfigError, match="set init_from"):
    trainer_lib.Trainer(_finetune("", ""))  # the preset without its source
  with pytest.raises(ConfigError, match="only variant is ':linear'"):
    _finetune("probe", source)
  # init_from only ever reads: the source's checkpoints are untouched.
  assert checkpoints.Checkpointer(source).latest_step() == 4


def test_frozen_backbone_is_a_masked_transformation():
  """Backbone updates are exactly 0 (no decay either); the head gets hand-written SGD, clipped by the
  head's own gradient norm."""
  config = default_config()
  config.update(freeze_backbone=True, weight_decay=0.1, grad_clip_norm=1.0, learning_rate=0.5,
                lr_decay_steps=(), momentum=0.9)
  rng = np.random.default_rng(0)
  params = {"stem_conv": {"kernel": rng.normal(size=(3, 3, 1, 4)).astype(np.float32)},
            "stem_bn": {"scale": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)},
            "head": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                     "bias": rng.normal(size=3).astype(np.float32)}}
  assert optim.backbone_mask(params) == {"stem_conv": {"kernel": True},
                                         "stem_bn": {"scale": True, "bias": True},
                                         "head": {"kernel": False, "bias": False}}
  tx = optim.create_optimizer(config)
  state, p = tx.init(params), params
  grads = jax.tree_util.tree_map(lambda x: 3 * np.ones_like(x), params)
  head_norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree_util.tree_leaves(grads["head"])))
  velocity = {k: np.zeros_like(v) for k, v in params["head"].items()}
  want = {k: v.copy() for k, v in params["head"].items()}
  for _ in range(2):
    updates, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, updates)
    for k in want:  # clip (head only) -> decay (kernel only) -> momentum -> lr
      g = grads["head"][k] / max(1.0, head_norm) + (0.1 * want[k] if k == "kernel" else 0)
      velocity[k] = 0.9 * velocity[k] + g
      want[k] = want[k] - 0.5 * velocity[k]
    assert all(not np.any(u) for u in jax.tree_util.tree_leaves(_without_head(updates)))
  assert _equal(_without_head(p), _without_head(params))
  for k in want:
    np.testing.assert_allclose(p["head"][k], want[k], rtol=1e-5, atol=1e-6)


def test_frozen_bn_statistics_step_runs_bn_in_inference_mode():
  model = models.get_model("resnet8", num_classes=3)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  variables = model.init(jax.random.key(1), x)
  stats = jax.tree_util.tree_map(lambda s: s + 0.5, variables["batch_stats"])
  tx = optax.sgd(0.1)
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                              batch_stats=stats, opt_state=tx.init(variables["params"]),
                              rng=jax.random.key_data(jax.random.key(2)))
  batch = {"image": x, "label": jnp.array([0, 1, 2, 0])}
  new, metrics = step_lib.train_step(state, batch, model=model, tx=tx,
                                     learning_rate_fn=lambda s, o: 0.1, freeze_bn_stats=True)
  assert _equal(new.batch_stats, stats)
  logits = model.apply({"params": variables["params"], "batch_stats": stats}, x, train=False)
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]))
  np.testing.assert_allclose(metrics["train/loss"], loss, rtol=1e-6)
