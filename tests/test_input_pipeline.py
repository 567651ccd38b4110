"""Input pipeline: augmentation against hand-written loops, determinism, process sharding, exact
evaluation, resume on real CIFAR-10, and the ImageNet-style JPEG path."""

import io
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from resnet_jax import cli
from resnet_jax import config as config_lib
from resnet_jax import data as data_lib
from resnet_jax.data import augment as aug
from resnet_jax.data import decode
from resnet_jax.data import tfds_builder, tfds_source
from resnet_jax.data.readahead import ReadAhead
from resnet_jax.run.errors import ConfigError, DataError
from resnet_jax.training import validation
from resnet_jax.training.trainer import Trainer
from tests.helpers import small_config

# Fast statistics for tests that do not check them (all 50k are the default).
FEW = 2000


def _refused(match: str, **keys) -> None:
  """The config of `keys` is refused before any data is read (the data layer trusts validated keys)."""
  with pytest.raises(ConfigError, match=match):
    validation.validate(config_lib.from_dict(keys))


def test_pad_crop_flip_equals_per_example_loop():
  rng = np.random.default_rng(0)
  images = rng.standard_normal((6, 5, 7, 2)).astype(np.float32)
  offset, flip = rng.integers(0, 9, (6, 2)), np.array([0, 1, 0, 1, 1, 0], bool)
  out = aug.pad_crop_flip(images, offset, flip)
  for i in range(6):
    padded = np.zeros((13, 15, 2), np.float32)
    padded[4:9, 4:11] = images[i]
    crop = padded[offset[i, 0]:offset[i, 0] + 5, offset[i, 1]:offset[i, 1] + 7]
    np.testing.assert_array_equal(out[i], crop[:, ::-1] if flip[i] else crop)


def test_crop_boxes_follow_their_rules():
  rng = np.random.default_rng(1)
  h, w = rng.integers(50, 600, 500), rng.integers(50, 600, 500)
  boxes = aug.inception_boxes(rng.random((500, aug.INCEPTION_ATTEMPTS, 4)), h, w)
  y0, x0, bh, bw = boxes.T
  assert (y0 >= 0).all() and (x0 >= 0).all() and (y0 + bh <= h).all() and (x0 + bw <= w).all()
  frac = bh * bw / (h * w)
  assert frac.min() >= 0.07 and frac.max() <= 1.0 and frac.std() > 0.1
  # Extreme aspect ratios fall back to the largest centred crop of ratio 4/3 (torchvision's rule).
  fb = aug.inception_boxes(np.full((1, aug.INCEPTION_ATTEMPTS, 4), 0.99), np.array([10]),
                           np.array([1000]))
  np.testing.assert_array_equal(fb, [[0, (1000 - 13) // 2, 10, 13]])
  s = aug.scale_boxes(rng.random((500, 3)), h, w, 224)
  shorter_resized = 224 * np.minimum(h, w) / s[:, 2]  # S: the shorter side after resizing
  assert shorter_resized.min() >= 256 - 1e-6 and shorter_resized.max() <= 480 + 1e-6
  assert (s[:, 0] + s[:, 2] <= h + 1e-9).all() and (s[:, 1] + s[:, 3] <= w + 1e-9).all()
  c = aug.center_boxes(np.array([300]), np.array([400]))
  np.testing.assert_allclose(c, [[18.75, 68.75, 262.5, 262.5]])  # 256/224 resize, centre 224


def test_normalizers_standardise_training_statistics():
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (64, 4, 4, 3)).astype(np.uint8)
  x = aug.Normalizer.fit("per_pixel_mean", images)(images)
  np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-6)
  assert np.allclose(x, images / 255 - (images / 255).mean(axis=0), atol=1e-6)  # no scaling
  x = aug.Normalizer.fit("per_channel", images)(images)
  np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1, atol=1e-4)
  _refused("normalization='nope' is not one of", dataset="digits", normalization="nope")
  # torchvision's fixed ImageNet statistics, whatever the images: what its converted weights expect.
  x = aug.Normalizer.fit("torchvision", images)(images)
  np.testing.assert_allclose(x[..., 1], (images[..., 1] / 255 - 0.456) / 0.224, rtol=1e-5, atol=1e-5)
  _refused("RGB mean and std; digits images have 1 channel", dataset="digits",
           normalization="torchvision")


def test_digits_validation_split_normalization_and_augment():
  full = data_lib.load_digits()
  ds = data_lib.load_digits("per_pixel_mean", validation_split=97, augment="cifar")
  assert ds.train_size == 1400 and len(ds.test_labels) == 97
  np.testing.assert_array_equal(ds.test_labels, full.train_labels[1400:])
  np.testing.assert_allclose(ds.train_images.mean(axis=0), 0, atol=1e-5)  # per-pixel mean of train
  batch = ds.train_batch(0, 3, 32)["image"]
  plain = ds.train_images[data_lib.example_indices(0, 3, 32, 1400)]
  assert batch.shape == plain.shape and not np.array_equal(batch, plain)  # crops and flips applied
  _refused("validation_split=1497", dataset="digits", validation_split=1497)
  _refused("augment='inception' crops variable-size images", dataset="digits", augment="inception")


@pytest.fixture(scope="module")
def cifar(cifar10_data_dir):
  return tfds_source.TfdsDataset("cifar10", cifar10_data_dir, augment="cifar",
                               normalization="per_pixel_mean", normalization_examples=FEW,
                               data_threads=2, prefetch_batches=3)


def simulate_processes(monkeypatch, count, index):
  monkeypatch.setattr(jax, "process_count", lambda: count)
  monkeypatch.setattr(jax, "process_index", lambda: index)


def test_cifar_batches_are_the_paper_augmentation_of_raw_records(cifar):
  assert (cifar.image_shape, cifar.num_classes, cifar.train_size) == ((32, 32, 3), 10, 50000)
  batch = cifar.train_batch(7, 123, 64)
  idx, params = data_lib.batch_plan(7, 123, 64, 50000, "cifar")
  records = cifar.records(idx)
  raw = np.stack([decode.to_array(decode.open_image(r["image"], 3), 3) for r in records])
  # By hand: per-pixel mean of the first FEW training images, subtract, zero-pad 4, crop, flip.
  first = np.stack([decode.to_array(decode.open_image(r["image"], 3), 3) for r in cifar.records(range(FEW))])
  x = raw / 255 - (first / 255).mean(axis=0)
  for i in range(64):
    padded = np.pad(x[i], ((4, 4), (4, 4), (0, 0)))
    oy, ox = params["offset"][i]
    crop = padded[oy:oy + 32, ox:ox + 32]
    np.testing.assert_allclose(batch["image"][i], crop[:, ::-1] if params["flip"][i] else crop,
                               atol=1e-5)
  np.testing.assert_array_equal(batch["label"], [r["label"] for r in records])


def test_cifar_batch_is_pure_function_and_processes_split_it(cifar, cifar10_data_dir, monkeypatch):
  # Read-ahead threads, request order and a fresh object do not change batch k.
  ahead = [cifar.train_batch(3, k, 32) for k in (40, 41, 42, 5, 42)]
  sync = tfds_source.TfdsDataset("cifar10", cifar10_data_dir, augment="cifar",
                               normalization="per_pixel_mean", normalization_examples=FEW)
  for b, k in zip(ahead, (40, 41, 42, 5, 42)):
    other = sync.train_batch(3, k, 32)
    np.testing.assert_array_equal(b["image"], other["image"])
    np.testing.assert_array_equal(b["label"], other["label"])
  assert not np.array_equal(ahead[0]["image"], sync.train_batch(4, 40, 32)["image"])
  # Two processes each read half of the global batch; together they make the same global batch.
  halves = []
  for index in (0, 1):
    simulate_processes(monkeypatch, 2, index)
    halves.append(sync.train_batch(3, 41, 32))
    assert len(halves[-1]["label"]) == 16
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), ahead[1]["image"])


def test_eval_counts_every_example_once_on_any_process_count(cifar, monkeypatch):
  # 10,000 test images in batches of 768: 13 full batches and one with 16 real examples, 752 pads.
  expected = np.bincount([r["label"] for r in cifar.records(range(10000), "eval")], minlength=10)
  for count in (1, 2, 4):
    labels, total, batches = [], 0.0, 0
    for index in range(count):
      simulate_processes(monkeypatch, count, index)
      for b in cifar.eval_batches(768):
        assert len(b["label"]) == 768 // count
        labels.append(b["label"][b["mask"] > 0])
        total += b["mask"].sum()
        batches += 1
    assert total == 10000 and batches == 14 * count
    np.testing.assert_array_equal(np.bincount(np.concatenate(labels), minlength=10), expected)


def test_train_arrays_are_the_unaugmented_training_split(cifar10_data_dir):
  ds = tfds_source.TfdsDataset("cifar10", cifar10_data_dir, validation_split=49000,
                             normalization_examples=FEW)
  images, labels = ds.train_arrays()
  assert images.shape == (1000, 32, 32, 3) and images.dtype == np.float32
  first = ds.records(range(1000))
  np.testing.assert_array_equal(labels, [r["label"] for r in first])
  np.testing.assert_allclose(images, ds.normalizer(ds.decode(first, {}, train=False)), atol=1e-6)
  _refused("imagenet2012 images vary in size", dataset="imagenet2012", data_on_device=True)


def test_validation_split_holds_out_the_end_of_train(cifar10_data_dir):
  ds = tfds_source.TfdsDataset("cifar10", cifar10_data_dir, validation_split=5000,
                             normalization_examples=FEW)
  assert (ds.train_size, ds.eval_size, ds.eval_split) == (45000, 5000, "train[-5000:]")
  assert np.bincount(data_lib.example_indices(0, 0, 45000, 45000)).max() == 1
  last = next(iter(ds.eval_batches(5000)))
  held_out = ds.records(range(5000), "eval")
  assert [r["id"] for r in held_out] == [r["id"] for r in ds.records(range(45000, 50000))]
  np.testing.assert_array_equal(last["label"], [r["label"] for r in held_out])
  ids = [r["id"] for r in held_out]
  assert len(set(ids)) == 5000 and last["mask"].sum() == 5000
  _refused("image_size=64, but cifar10 images are 32x32", dataset="cifar10", image_size=64)
  _refused("validation_split=50000", dataset="cifar10", validation_split=50000)


def _cli_train(workdir, data_dir, steps):
  args = ["train", "--config", os.path.join(config_lib.presets_dir(), "quickstart.py"),
          "--workdir", str(workdir), "--config.dataset=cifar10", f"--config.data_dir={data_dir}",
          "--config.model=resnet8", "--config.augment=cifar", "--config.normalization=per_pixel_mean",
          f"--config.normalization_examples={FEW}", "--config.validation_split=256",
          "--config.batch_size=32", "--config.eval_batch_size=128", f"--config.total_steps={steps}",
          "--config.lr_decay_steps=(4,)", "--config.checkpoint_every_steps=2",
          "--config.eval_every_steps=0", "--config.log_every_steps=1", "--config.num_devices=1"]
  assert cli.main(args) == 0


def test_resume_mid_epoch_on_real_cifar10(cifar10_data_dir, tmp_path, capsys):
  """Stop at step 3 (mid-epoch, not a checkpoint step), resume to 6: same batches, same parameters."""
  _cli_train(tmp_path / "whole", cifar10_data_dir, 6)
  _cli_train(tmp_path / "parts", cifar10_data_dir, 3)
  _cli_train(tmp_path / "parts", cifar10_data_dir, 6)
  last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert last["step"] == 6 and 0 <= last["eval/accuracy"] <= 1
  config = json.load(open(tmp_path / "parts" / "config.json"))
  assert config["dataset"] == "cifar10" and config["augment"] == "cifar"
  params = []
  for run in ("whole", "parts"):
    manager = ocp.CheckpointManager(str(tmp_path / run / "checkpoints"))
    saved = manager.restore(6, args=ocp.args.StandardRestore())  # the tree as saved, no template
    manager.close()
    assert int(saved["step"]) == 6
    params.append(jax.tree_util.tree_leaves(saved["params"]))
  assert all(np.array_equal(a, b) for a, b in zip(*params))  # bit-identical on CPU
  # The batches a resumed run asks for (3, 4, 5) equal an uninterrupted stream's.
  config = config_lib.from_json(str(tmp_path / "parts" / "config.json"))
  uninterrupted = tfds_source.TfdsDataset.from_config(config, 32)
  stream = [uninterrupted.train_batch(0, k, 32) for k in range(6)]
  resumed = tfds_source.TfdsDataset.from_config(config, 32)
  for k in (3, 4, 5):
    np.testing.assert_array_equal(resumed.train_batch(0, k, 32)["image"], stream[k]["image"])


@pytest.mark.parametrize("augment", ["inception", "scale", "none"])
def test_imagenet_style_jpeg_pipeline(imagenet_data_dir, augment):
  _, data_dir = imagenet_data_dir
  ds = tfds_source.TfdsDataset("imagenet2012", data_dir, augment=augment, image_size=48,
                             data_threads=1)
  assert (ds.image_shape, ds.num_classes, ds.train_size, ds.eval_size) == ((48, 48, 3), 1000, 12, 5)
  assert ds.eval_split == "validation"
  a, b = ds.train_batch(0, 2, 8), ds.train_batch(0, 2, 8)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert a["image"].shape == (8, 48, 48, 3) and a["image"].dtype == np.float32
  eval_view = [e for e in ds.eval_batches(3)]  # 5 examples in batches of 3: one padded batch
  assert [e["mask"].tolist() for e in eval_view] == [[1, 1, 1], [1, 1, 0]]
  idx, params = data_lib.batch_plan(0, 2, 8, 12, augment)
  raw = ds.decode(ds.records(idx), params, train=True)
  np.testing.assert_allclose(ds.normalizer(raw), a["image"], atol=1e-6)
  if augment == "none":  # no training augmentation: the evaluation view of the training images
    assert np.array_equal(raw, ds.decode(ds.records(idx), {}, train=False))
  else:
    assert params["flip"].any()


def test_bad_data_config_is_named(tmp_path):
  _refused("augment='cifar' pads and crops fixed-size images", dataset="imagenet2012",
           augment="cifar")
  with pytest.raises(ConfigError, match="not 'digits', 'synthetic' or a TFDS dataset name"):
    tfds_builder.open_builder("cifar11", str(tmp_path))
  with pytest.raises(tfds_builder.DataUnavailableError, match="resnet-jax prepare cifar100"):
    tfds_builder.open_builder("cifar100", str(tmp_path), download=False)
  # Keys that need no data are checked before a dataset opens (resnet_jax.training.validation).
  with pytest.raises(ConfigError, match="augment='flip' is not one of"):
    validation.validate(config_lib.from_dict({"dataset": "cifar10", "augment": "flip"}))


def test_a_dataset_known_only_by_its_metadata_is_checked_as_it_opens(cifar10_data_dir, monkeypatch):
  """The same rules, read from the metadata before any example, for a dataset KNOWN_TFDS lacks."""
  config = config_lib.from_dict({"dataset": "cifar10", "data_dir": cifar10_data_dir,
                                 "eval_crops": "ten", "normalization_examples": FEW})
  with pytest.raises(ConfigError, match="tested whole"):
    validation.validate(config)  # known: refused before anything is read
  assert validation.metadata_check(config) is None
  monkeypatch.delitem(data_lib.KNOWN_TFDS, "cifar10")
  validation.validate(config)  # unknown: nothing to check it against yet
  with pytest.raises(ConfigError, match="cifar10 images are 32x32 and are tested whole"):
    data_lib.get_dataset(config, 32, check=validation.metadata_check(config))
  config.eval_crops, config.validation_split = "center", 50000  # would leave no training example
  with pytest.raises(ConfigError, match=r"validation_split=50000 must be in \[0, 50000\)"):
    data_lib.get_dataset(config, 32, check=validation.metadata_check(config))


def test_gs_data_dir_is_read_through_a_local_copy(cifar10_data_dir, gcs_env, tmp_path):
  # array_record cannot open gs:// files; a gs:// data_dir (here in the GCS emulator, tests/gcs.py)
  # is mirrored once into data_cache_dir, through gcsfs.
  import gcsfs  # pylint: disable=g-import-not-at-top

  data_dir = f"gs://bucket/{tmp_path.name}/tensorflow_datasets"
  gcsfs.GCSFileSystem().put(cifar10_data_dir, data_dir, recursive=True)
  cache = str(tmp_path / "cache")
  builder = tfds_builder.open_builder("cifar10", data_dir, cache_dir=cache)
  assert str(builder.data_dir).startswith(cache)
  assert sorted(os.listdir(os.path.join(cache, "cifar10", "3.0.2"))) == sorted(
      os.listdir(os.path.join(cifar10_data_dir, "cifar10", "3.0.2")))
  assert len(builder.as_data_source(split="test")) == 10000


def test_data_bench_reports_rates_and_memory(cifar10_data_dir, capsys):
  args = ["data-bench", "--data", "cifar10", "--data-dir", cifar10_data_dir, "--steps", "2",
          "--batch-size", "32", "--threads", "0,1"]
  assert cli.main(args) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert [r["threads"] for r in result["rows"]] == [0, 1] and result["image_shape"] == [32, 32, 3]
  assert result["images_per_sec_per_core"] == result["rows"][0]["images_per_sec"] > 0
  assert result["augment"] == "cifar" and result["peak_rss_mib"] > 0
  assert cli.main(args[:-1] + [""]) == 2  # no thread count: a named error, not a traceback


def test_training_reads_prepared_data_without_tensorflow(cifar10_data_dir):
  code = ("import sys; from resnet_jax.data import tfds_source; "
          f"ds = tfds_source.TfdsDataset('cifar10', {cifar10_data_dir!r}, augment='cifar', "
          "normalization_examples=500, data_threads=2); ds.train_batch(0, 0, 16); "
          "next(iter(ds.eval_batches(16))); assert 'tensorflow' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_ten_crop_testing_views_and_scores(imagenet_data_dir):
  """The paper's 10-crop test: 4 corners + centre of 0.875 x the shorter side, and their mirrors;
  the evaluation averages the 10 softmax scores of each image."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from resnet_jax import models  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top

  _, data_dir = imagenet_data_dir
  ds = tfds_source.TfdsDataset("imagenet2012", data_dir, image_size=32,
                               eval_layout=data_lib.EvalLayout("ten"))
  (first, second) = list(ds.eval_batches(3))
  assert first["image"].shape == (3, 10, 32, 32, 3) and second["mask"].tolist() == [1, 1, 0]
  records = ds.records([0], "eval")
  image = decode.open_image(records[0]["image"], 3)
  h, w = image.height, image.width
  side = 0.875 * min(h, w)
  by_hand = [(0, 0), (0, w - side), (h - side, 0), (h - side, w - side),
             ((h - side) / 2, (w - side) / 2)]
  for k, (y, x) in enumerate(by_hand):
    crop = np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR, box=(x, y, x + side, y + side)))
    np.testing.assert_allclose(first["image"][0, k], ds.normalizer(crop), atol=1e-6)
    np.testing.assert_allclose(first["image"][0, k + 5], ds.normalizer(crop)[:, ::-1], atol=1e-6)
  centre = ds.records([0], "eval")
  center_view = tfds_source.TfdsDataset("imagenet2012", data_dir, image_size=32).decode(
      centre, {}, train=False)
  np.testing.assert_array_equal(ds.ten_crops(centre)[0, 4], center_view[0])  # crop 5 is the centre

  model = models.get_model("resnet18", num_classes=1000)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  state = step_lib.TrainState(step=0, params=variables["params"],
                              batch_stats=variables["batch_stats"], opt_state=None, rng=None)
  sums = step_lib.eval_step(state, first, model=model, layout=ds.eval_layout)
  logits = model.apply(variables, first["image"].reshape(30, 32, 32, 3), train=False)
  probs = np.asarray(jax.nn.softmax(logits)).reshape(3, 10, 1000).mean(1)
  np.testing.assert_allclose(float(sums["correct"]),
                             np.sum(probs.argmax(-1) == first["label"]), atol=1e-6)
  np.testing.assert_allclose(float(sums["loss"]), -np.sum(np.log(
      probs[np.arange(3), first["label"]])), rtol=1e-5)
  # A run's trainer evaluates the same views: its data and its step both read the run's layout.
  trainer = Trainer(small_config(dataset="imagenet2012", data_dir=data_dir, model="resnet18",
                                 image_size=32, eval_crops="ten", eval_batch_size=3))
  state = trainer.init_state()
  (run,) = trainer.evaluate(trainer.strategy.put_state(state))
  by_hand = [step_lib.eval_step(state, b, model=trainer.model, layout=ds.eval_layout)
             for b in ds.eval_batches(3)]
  np.testing.assert_allclose(run["eval/loss"], sum(float(t["loss"]) for t in by_hand) / 5, rtol=1e-5)
  _refused("cifar10 images are 32x32 and are tested whole", dataset="cifar10", eval_crops="ten")



def test_read_ahead_serves_fn_of_key_and_step_in_any_request_order():
  # pow(key, k) stands for a batch function. Worker processes: the next test (each pool of
  # workers takes seconds to start, so it is started as few times as possible).
  for threads in (0, 2):
    ahead = ReadAhead(pow, threads, 4)
    assert [ahead.get(3, k) for k in (0, 1, 2, 7, 8, 2)] == [3 ** k for k in (0, 1, 2, 7, 8, 2)]
    assert list(ahead.run(2, 5, 11)) == [2 ** k for k in range(5, 11)]
    ahead.close()


def test_batches_do_not_depend_on_worker_processes(imagenet_data_dir):
  """Worker processes (Grain mp_prefetch) build the same batches as one process: batch k is a pure
  function of (seed, step), served in order; evaluation too."""
  _, data_dir = imagenet_data_dir
  make = lambda workers: tfds_source.TfdsDataset(
      "imagenet2012", data_dir, augment="inception", image_size=32, data_workers=workers,
      prefetch_batches=2, color_std=0.1, normalization_examples=4)
  alone, two = make(0), make(2)
  for k in range(3):
    got, want = two.train_batch(5, k, 6), alone.train_batch(5, k, 6)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  for got, want in zip(two.eval_batches(2), alone.eval_batches(2), strict=True):
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["mask"], want["mask"])
  _refused("data_workers=-1 must be >= 0", dataset="imagenet2012", data_workers=-1)


def test_default_jpeg_path_is_exact_on_photographs():
  """decode_crops (crop, resize, mirror, normalise in one pass) against a hand-written loop over
  PIL and NumPy: the same uint8 pixels and the same float32 values, bit for bit."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from resnet_jax.bench.photos import photo_jpegs  # pylint: disable=g-import-not-at-top

  jpegs = photo_jpegs(6)
  _, params = data_lib.batch_plan(3, 7, 6, 100, "inception", color_std=0.1)
  norm = aug.Normalizer.torchvision()
  images = [Image.open(io.BytesIO(j)) for j in jpegs]
  boxes = aug.inception_boxes(params["u"], np.array([im.height for im in images]),
                              np.array([im.width for im in images]))
  want = []
  for im, (y, x, h, w), flip in zip(images, boxes, params["flip"]):
    crop = np.asarray(im.resize((40, 40), Image.Resampling.BILINEAR, box=(x, y, x + w, y + h)))
    want.append(crop[:, ::-1] if flip else crop)
  want = np.stack(want)
  np.testing.assert_array_equal(decode.decode_crops(jpegs, "inception", params, 40, 3), want)
  offsets = np.asarray(aug.pca_offsets(params["alpha"]), np.float32)[:, None, None, :]
  by_hand = (want.astype(np.float32) * np.float32(1 / 255) + offsets - norm.mean) / norm.std
  np.testing.assert_array_equal(decode.decode_crops(jpegs, "inception", params, 40, 3, norm), by_hand)
  np.testing.assert_array_equal(norm(want, aug.pca_offsets(params["alpha"])), by_hand)
  per_pixel = aug.Normalizer(np.random.default_rng(0).random((40, 40, 3)))
  np.testing.assert_array_equal(per_pixel(want), want.astype(np.float32) * np.float32(1 / 255)
                                - per_pixel.mean)


@pytest.fixture(scope="module")
def damaged_imagenet(tmp_path_factory):
  """imagenet2012 prepared from 6 photographs, one of them truncated and one not an image at all."""
  from resnet_jax.bench import fake_imagenet, photos  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import prepare  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("damaged")
  jpegs = photos.photo_jpegs(8, min_side=40, max_side=64)
  jpegs[3] = jpegs[3][:len(jpegs[3]) // 2]
  jpegs[5] = b"not a JPEG"
  fake_imagenet.write_fake_imagenet(str(root / "manual"), ("n01440764", "n01443537"), per_class=3,
                                    num_val=2, jpegs=jpegs)
  prepare.prepare("imagenet2012", str(root / "manual"), str(root / "data"))
  return str(root / "data")


def test_unreadable_images_and_records_are_named(damaged_imagenet, tmp_path):
  make = lambda workers: tfds_source.TfdsDataset(
      "imagenet2012", damaged_imagenet, augment="inception", image_size=16,
      normalization="torchvision", data_workers=workers)
  ds = make(0)
  names = {r["file_name"].decode(): i for i, r in enumerate(ds.records(range(6)))}
  truncated = names["n01443537_1.JPEG"]  # the 4th image written: class 2's first
  with pytest.raises(DataError, match=rf"imagenet2012 train example {truncated} \(n01443537_1.JPEG\) "
                     r"in .* is not a readable image \(.*\); replace it"):
    ds.train_batch(0, 0, 6)  # the first batch holds every training image
  # From a worker process: the same error, not a dead worker.
  with pytest.raises(DataError, match=r"\(n01443537_1.JPEG\) in .* is not a readable image"):
    make(1).train_batch(0, 0, 6)
  # A truncated array_record file: its records come back empty.
  bad = tmp_path / "data"
  shutil.copytree(damaged_imagenet, bad)
  (path,) = bad.glob("imagenet2012/*/imagenet2012-train.array_record-*")
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  with pytest.raises(DataError, match=r"imagenet2012 train example 0 in .* is empty: its array_record "
                     "file is truncated or damaged; prepare imagenet2012 again"):
    tfds_source.TfdsDataset("imagenet2012", str(bad), augment="inception", image_size=16,
                            normalization="torchvision").records([0])


def test_jpegs_decode_by_libjpeg_turbo_to_pils_pixels_and_boxes(monkeypatch):
  """The default decode (libjpeg-turbo into NumPy) gives PIL's sizes, so the same boxes for the same
  (seed, step), and PIL's pixels; what it does not decode (grey from colour, CMYK, PNG) goes to PIL."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from resnet_jax.bench.photos import photo_jpegs  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import jpeg  # pylint: disable=g-import-not-at-top

  jpegs = photo_jpegs(4)
  rgb = Image.open(io.BytesIO(jpegs[0]))
  for mode, fmt in (("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG")):
    buf = io.BytesIO()
    rgb.convert(mode).save(buf, format=fmt)
    jpegs.append(buf.getvalue())
  sizes = [Image.open(io.BytesIO(j)).size[::-1] for j in jpegs]
  assert [jpeg.header(j, 3) for j in jpegs] == sizes[:5] + [None, None]  # CMYK, PNG: PIL's
  assert jpeg.header(jpegs[0], 1) is None and jpeg.header(jpegs[4], 1) == sizes[4]
  for augment, channels in (("inception", 3), ("none", 3), ("inception", 1)):
    _, params = data_lib.batch_plan(5, 3, len(jpegs), 100, augment, color_std=0.1)
    fast = decode.decode_crops(jpegs, augment, params, 40, channels)
    with monkeypatch.context() as m:
      m.setattr(jpeg, "header", lambda data, channels: None)  # PIL for every image
      np.testing.assert_array_equal(decode.decode_crops(jpegs, augment, params, 40, channels), fast)


def test_reduced_dct_scale_stays_close_to_the_exact_path():
  """dct_scaling=True (off by default) decodes at M/8 of the size where the crop allows: measured at
  38-43 dB PSNR against the exact path on photographs (docs/results/input_pipeline); bounded here."""
  from resnet_jax.bench.photos import photo_jpegs  # pylint: disable=g-import-not-at-top

  jpegs = photo_jpegs(8)
  for augment in ("inception", "none"):
    _, params = data_lib.batch_plan(0, 1, len(jpegs), 100, augment)
    exact = decode.decode_crops(jpegs, augment, params, 64, 3).astype(np.float64)
    scaled = decode.decode_crops(jpegs, augment, params, 64, 3, dct_scaling=True)
    assert not np.array_equal(scaled, exact)  # 64 px crops of 300-500 px photographs: reduced
    psnr = 10 * np.log10(255 ** 2 / np.mean((scaled - exact) ** 2))
    assert psnr > 33, (augment, psnr)


def test_device_normalisation_equals_the_hosts(imagenet_data_dir, cifar10_data_dir):
  """normalize_on_device: variable-size images leave the host uint8 (with their PCA offsets) and
  the device normaliser gives the host's float32 values (to float32 rounding: XLA may fuse the
  multiply-add; measured <= 5e-7 apart); fixed-size ones stay normalised on the host."""
  _, data_dir = imagenet_data_dir
  make = lambda on_device: tfds_source.TfdsDataset(
      "imagenet2012", data_dir, augment="inception", image_size=32, normalization="per_channel",
      color_std=0.1, normalize_on_device=on_device)
  host, device = make(False), make(True)
  assert host.device_normalizer is None
  a, b = host.train_batch(0, 3, 8), device.train_batch(0, 3, 8)
  assert b["image"].dtype == np.uint8 and b["pca_offset"].shape == (8, 3)
  got = device.device_normalizer(jax.device_put(b))
  assert set(got) == {"image", "label"}
  np.testing.assert_allclose(np.asarray(got["image"]), a["image"], rtol=0, atol=2e-6)
  assert np.abs(a["image"]).max() > 1  # standardised values, not [0, 1] pixels
  for x, y in zip(host.eval_batches(4), device.eval_batches(4)):
    assert y["image"].dtype == np.uint8
    np.testing.assert_allclose(np.asarray(device.device_normalizer(y)["image"]), x["image"],
                               rtol=0, atol=2e-6)
  cifar = tfds_source.TfdsDataset("cifar10", cifar10_data_dir, augment="cifar",
                                  normalization_examples=FEW, normalize_on_device=True)
  assert cifar.device_normalizer is None and cifar.train_batch(0, 0, 4)["image"].dtype == np.float32


def test_trainer_normalises_imagenet_batches_on_the_device(imagenet_data_dir):
  """A Trainer opens variable-size data with device normalisation; its steps (one or two per
  dispatch) and evaluation see what the host-normalised dataset gives, to float32 rounding."""
  from resnet_jax.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  _, data_dir = imagenet_data_dir
  config = config_lib.default_config()
  config.update(dataset="imagenet2012", data_dir=data_dir, model="resnet8", image_size=32,
                augment="inception", color_augment="pca", batch_size=4, eval_batch_size=4,
                num_devices=1, normalization="per_channel", normalization_examples=12)
  for k in (1, 2):
    config.steps_per_dispatch = k
    device = trainer_lib.Trainer(config)
    host = trainer_lib.Trainer(config, data=tfds_source.TfdsDataset.from_config(config, 32))
    assert device.dataset.device_normalizer is not None and host.dataset.device_normalizer is None
    (_, got), (_, want) = (t.dispatch(t.init_state(0), 0, k) for t in (device, host))  # donated
    np.testing.assert_allclose(np.asarray(got["train/loss"]), np.asarray(want["train/loss"]),
                               rtol=1e-5)
  assert device.evaluate(device.init_state(0))[0]["eval/loss"] == pytest.approx(
      host.evaluate(host.init_state(0))[0]["eval/loss"], rel=1e-5)
