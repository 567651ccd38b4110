"""Offline preparation: CIFAR-10 from the real binary files, CIFAR-100, ImageNet's manual_dir path.

Every check compares what TFDS serves after `prepare` with the raw files it was built from.
"""

import gzip
import io
import os
import tarfile

import numpy as np
import pytest

from resnet_jax import cli
from resnet_jax.data import prepare

CIFAR10_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def raw_cifar10(source, fname):
  """(labels, HWC uint8 images) of one official file, read as the CIFAR README says."""
  raw = np.frombuffer(gzip.open(os.path.join(source, fname + ".gz")).read(), np.uint8)
  raw = raw.reshape(10000, 3073)
  return raw[:, 0], raw[:, 1:].reshape(10000, 3, 32, 32).transpose(0, 2, 3, 1)


def test_cifar10_prepared_offline_matches_raw_records(cifar10_data_dir, cifar10_source):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  ds = tfds.data_source("cifar10", data_dir=cifar10_data_dir, download=False)
  assert {k: len(v) for k, v in ds.items()} == {"train": 50000, "test": 10000}
  builder = tfds.builder("cifar10", data_dir=cifar10_data_dir)
  names = open(os.path.join(cifar10_source, "batches.meta.txt")).read().split()
  assert builder.info.features["label"].names == names
  labels_only = tfds.data_source("cifar10", data_dir=cifar10_data_dir, download=False,
                                decoders={"image": tfds.decode.SkipDecoding()})
  for split, per_class in (("train", 5000), ("test", 1000)):
    labels = np.array([ex["label"] for ex in labels_only[split].__getitems__(range(len(ds[split])))])
    assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
  # TFDS ids are "<split>_<index in the concatenated official files>": check a few examples.
  test_labels, test_images = raw_cifar10(cifar10_source, "test_batch.bin")
  b3_labels, b3_images = raw_cifar10(cifar10_source, "data_batch_3.bin")
  seen = 0
  for split, i in (("test", 0), ("test", 1), ("test", 9999), ("train", 0), ("train", 49999)):
    ex = ds[split][i]
    index = int(ex["id"].decode().split("_")[1])
    if split == "test":
      label, image = test_labels[index], test_images[index]
    elif 20000 <= index < 30000:
      label, image = b3_labels[index - 20000], b3_images[index - 20000]
    else:
      label, image = raw_cifar10(cifar10_source, f"data_batch_{index // 10000 + 1}.bin")
      label, image = label[index % 10000], image[index % 10000]
    assert ex["label"] == label and np.array_equal(ex["image"], image), (split, i, index)
    seen += 1
  assert seen == 5


def test_cifar10_from_official_tarball_and_plain_files(tmp_path, monkeypatch, cifar10_source):
  """The same staged bytes from .gz files, plain .bin files, and the official tar.gz (file or folder).

  Small random files (20 records each, counts patched to match) keep this fast; the real files take
  the .gz path in the session fixture.
  """
  archive, folder, counts, label_files, label_bytes, classes = prepare.CIFAR["cifar10"]
  counts = {fname: 20 for fname in counts}
  monkeypatch.setitem(prepare.CIFAR, "cifar10",
                      (archive, folder, counts, label_files, label_bytes, classes))
  rng = np.random.default_rng(0)
  gz, plain = tmp_path / "gz", tmp_path / "plain"
  gz.mkdir()
  plain.mkdir()
  with tarfile.open(tmp_path / archive, "w:gz") as tar:
    for fname in CIFAR10_FILES + ["batches.meta.txt"]:
      if fname.endswith(".bin"):
        rec = rng.integers(0, 256, (20, 3073), np.uint8)
        rec[:, 0] %= 10
        data = rec.tobytes()
      else:
        data = open(os.path.join(cifar10_source, fname), "rb").read()
      (plain / fname).write_bytes(data)
      (gz / (fname + ".gz")).write_bytes(gzip.compress(data))
      member = tarfile.TarInfo(f"{folder}/{fname}")
      member.size = len(data)
      tar.addfile(member, io.BytesIO(data))
  staged = {}
  for source in (gz, plain, tmp_path / archive, tmp_path):
    out = os.path.join(prepare.stage_cifar("cifar10", str(source), str(tmp_path / "s" / source.name)),
                       folder)
    staged[source] = {f: open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out))}
  assert sorted(staged[gz]) == sorted(CIFAR10_FILES + ["batches.meta.txt"])
  assert staged[gz] == staged[plain] == staged[tmp_path / archive] == staged[tmp_path]
  assert staged[gz]["test_batch.bin"] == (plain / "test_batch.bin").read_bytes()


def test_missing_or_corrupt_cifar_files_are_named(tmp_path, capsys, cifar10_source):
  src = tmp_path / "src"
  src.mkdir()
  for fname in os.listdir(cifar10_source):
    if fname != "data_batch_3.bin.gz":
      os.symlink(os.path.join(cifar10_source, fname), src / fname)
  with pytest.raises(prepare.SourceError, match="missing data_batch_3.bin"):
    prepare.stage_cifar("cifar10", str(src), str(tmp_path / "a"))
  # Truncated: a whole gzip stream of too few bytes.
  (src / "data_batch_3.bin").write_bytes(b"\x00" * 3073 * 9999)
  with pytest.raises(prepare.SourceError, match="data_batch_3.bin is corrupt or incomplete"):
    prepare.stage_cifar("cifar10", str(src), str(tmp_path / "b"))
  os.remove(src / "data_batch_3.bin")
  (src / "data_batch_3.bin.gz").write_bytes(b"not gzip at all")
  with pytest.raises(prepare.SourceError, match="data_batch_3.bin.gz is corrupt"):
    prepare.stage_cifar("cifar10", str(src), str(tmp_path / "c"))
  # A label byte out of range (a file of another dataset, or damaged).
  bad = bytearray(gzip.open(os.path.join(cifar10_source, "data_batch_1.bin.gz")).read())
  bad[3073 * 5] = 12
  os.remove(src / "data_batch_3.bin.gz")
  (src / "data_batch_3.bin").write_bytes(bytes(bad))
  with pytest.raises(prepare.SourceError, match="data_batch_3.bin is corrupt: a label byte is 12"):
    prepare.stage_cifar("cifar10", str(src), str(tmp_path / "d"))
  # The command line says the same and exits 2 (bad input).
  code = cli.main(["prepare", "cifar10", "--source", str(tmp_path / "nowhere"),
                   "--data-dir", str(tmp_path / "data")])
  assert code == 2 and "does not exist" in capsys.readouterr().err
  assert cli.main(["prepare", "no_such_dataset", "--source", str(src), "--data-dir", "x"]) == 2


def test_cifar100_from_binary_files(tmp_path, monkeypatch):
  """CIFAR-100's layout (2 label bytes: coarse, fine) through TFDS's own cifar100 builder.

  The real files are not here, so the record counts are shrunk to 300/100 random records; the code
  path (staging, TFDS's generator, the labels) is the one the real files take.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  archive, folder, _, label_files, label_bytes, classes = prepare.CIFAR["cifar100"]
  counts = {"train.bin": 300, "test.bin": 100}
  monkeypatch.setitem(prepare.CIFAR, "cifar100",
                      (archive, folder, counts, label_files, label_bytes, classes))
  rng = np.random.default_rng(0)
  src = tmp_path / "cifar-100-binary"
  src.mkdir()
  records = {}
  for fname, n in counts.items():
    rec = rng.integers(0, 256, (n, 3074), np.uint8)
    rec[:, 0], rec[:, 1] = rng.integers(0, 20, n), rng.integers(0, 100, n)
    records[fname] = rec
    (src / fname).write_bytes(rec.tobytes())
  (src / "coarse_label_names.txt").write_text("\n".join(f"coarse{i}" for i in range(20)))
  (src / "fine_label_names.txt").write_text("\n".join(f"fine{i}" for i in range(100)))
  data_dir = str(tmp_path / "data")
  assert cli.main(["prepare", "cifar100", "--source", str(src), "--data-dir", data_dir]) == 0
  ds = tfds.data_source("cifar100", data_dir=data_dir, download=False)
  assert {k: len(v) for k, v in ds.items()} == {"train": 300, "test": 100}
  for split, fname in (("train", "train.bin"), ("test", "test.bin")):
    for i in (0, 7, counts[fname] - 1):
      ex = ds[split][i]
      rec = records[fname][int(ex["id"].decode().split("_")[1])]
      assert (ex["coarse_label"], ex["label"]) == (rec[0], rec[1])
      assert np.array_equal(ex["image"], rec[2:].reshape(3, 32, 32).transpose(1, 2, 0))


def test_imagenet_manual_dir_layout(imagenet_data_dir, tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  manual, data_dir = imagenet_data_dir
  ds = tfds.data_source("imagenet2012", data_dir=data_dir, download=False)
  assert {k: len(v) for k, v in ds.items()} == {"train": 12, "validation": 5}
  names = tfds.builder("imagenet2012", data_dir=data_dir).info.features["label"].names
  for ex in ds["train"]:
    assert names[ex["label"]] == ex["file_name"].decode().split("_")[0]
  # Validation labels come from TFDS's list, in the sorted order of the official file names.
  truth = open(tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")).read().split()
  got = sorted((ex["file_name"].decode(), names[ex["label"]]) for ex in ds["validation"])
  assert [label for _, label in got] == truth[:5]
  assert ds["validation"][0]["image"].ndim == 3

  with pytest.raises(prepare.SourceError, match="missing ILSVRC2012_img_val.tar"):
    empty = tmp_path / "manual"
    empty.mkdir()
    os.symlink(os.path.join(manual, "ILSVRC2012_img_train.tar"), empty / "ILSVRC2012_img_train.tar")
    prepare.prepare("imagenet2012", str(empty), str(tmp_path / "data"))
  (empty / "ILSVRC2012_img_val.tar").write_bytes(b"\x00" * 100)
  with pytest.raises(prepare.SourceError, match="ILSVRC2012_img_val.tar is corrupt"):
    prepare.prepare("imagenet2012", str(empty), str(tmp_path / "data"))
