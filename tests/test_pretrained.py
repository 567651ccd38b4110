"""torchvision weights both ways: logits parity at every ImageNet depth, bit-identical round trips,
state-dict files, checksummed downloads from a local server, and `resnet-jax convert` -> eval.

These run in CI (the test extra brings torch and torchvision) and are never skipped.
"""

import hashlib
import http.server
import json
import os
import pathlib
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from resnet_jax import cli, models, pretrained
from resnet_jax.pretrained import hub as dl
from resnet_jax.run.errors import ConfigError, WeightsError
from resnet_jax.training import trainer as trainer_lib
from tests.helpers import small_config

# Odd, non-square input: every stride-2 layer sees an odd size, where padding conventions differ.
INPUT_NCHW = (2, 3, 45, 37)


def torchvision_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
  """torchvision's `name` in eval mode with random weights and random BN statistics.

  The statistics are those of one random training batch (so activations stay O(1) through 150
  layers), then perturbed; BN scales and biases are random, each block's last BN scale small as in
  trained ResNets, so the logits stay O(1) and float32 rounding stays far below the 1e-4 tolerance.
  """
  torch.manual_seed(seed)
  model = getattr(torchvision.models, name)(**kwargs)
  g = torch.Generator().manual_seed(seed + 1)
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for m in bns:
      m.weight.uniform_(0.5, 1.5, generator=g)
      m.bias.normal_(0, 0.2, generator=g)
      m.momentum = 1.0  # the running statistics become this batch's
    for block in model.modules():
      if isinstance(block, (torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck)):
        (block.bn3 if hasattr(block, "bn3") else block.bn2).weight.uniform_(0.1, 0.4, generator=g)
    model.fc.bias.normal_(0, 0.1, generator=g)
    model.train()
    model(torch.randn(8, *INPUT_NCHW[1:], generator=g))
    for m in bns:
      m.momentum = 0.1
      m.num_batches_tracked.zero_()  # as a model that was never trained holds it
      m.running_mean.add_(0.2 * m.running_var.sqrt() * torch.randn(m.num_features, generator=g))
      m.running_var.mul_(torch.empty(m.num_features).uniform_(0.7, 1.4, generator=g))
  return model.eval()


def _input(seed: int = 2):
  x = torch.randn(*INPUT_NCHW, generator=torch.Generator().manual_seed(seed))
  return x, jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def _assert_same_state_dict(ours, theirs):
  assert list(ours) == list(theirs)  # torchvision's order too
  for key, value in theirs.items():
    mine = torch.from_numpy(ours[key])
    assert mine.dtype == value.dtype and mine.shape == value.shape, key
    assert torch.equal(mine, value), key


# The two deepest compile for minutes on CPU: the e2e tier.
@pytest.mark.parametrize("name", [n if n not in ("resnet101", "resnet152") else
                                  pytest.param(n, marks=pytest.mark.e2e) for n in pretrained.NAMES])
def test_torchvision_logits_and_bit_identical_round_trip(name):
  tv = torchvision_model(name)
  x_torch, x = _input()
  with torch.no_grad():
    ref = tv(x_torch).numpy()
  variables = pretrained.from_torchvision(tv.state_dict(), name)
  logits = jax.jit(lambda v, x: models.get_model(name).apply(v, x, train=False))(variables, x)
  assert logits.shape == (2, 1000) and ref.std() > 0.1  # a non-trivial comparison
  np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=0)
  back = pretrained.to_torchvision(variables, name)
  _assert_same_state_dict(back, tv.state_dict())
  fresh = getattr(torchvision.models, name)()
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_backbone_features_match_torchvision_stage_by_stage():
  tv = torchvision_model("resnet18", seed=3)
  x_torch, x = _input()
  with torch.no_grad():
    h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x_torch))))
    want = {}
    for i in range(1, 5):
      h = want[f"stage{i}"] = getattr(tv, f"layer{i}")(h)
    want["pooled"] = torch.flatten(tv.avgpool(h), 1)
  backbone = models.get_model("resnet18", num_classes=0)
  variables = pretrained.from_torchvision(tv.state_dict(), head=False)
  assert "head" not in variables["params"]
  got = jax.jit(lambda v, x: backbone.apply(v, x, return_features=True))(variables, x)
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    value = value.numpy()
    if value.ndim == 4:
      value = value.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    np.testing.assert_allclose(np.asarray(got[key]), value, atol=1e-4, rtol=0, err_msg=key)
  # A backbone's state dict has no fc; torchvision loads it with strict=False.
  back = pretrained.to_torchvision(variables)
  assert not any(k.startswith("fc.") for k in back)
  missing, unexpected = torchvision.models.resnet18().load_state_dict(
      {k: torch.from_numpy(v) for k, v in back.items()}, strict=False)
  assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected


def test_scanned_layout_converts_both_ways():
  tv = torchvision_model("resnet34", seed=4, num_classes=10)
  _, x = _input()
  unrolled = pretrained.from_torchvision(tv.state_dict())
  scanned = pretrained.from_torchvision(tv.state_dict(), scan_blocks=True)
  assert "stage3_scan" in scanned["params"] and "stage3_block2" not in scanned["params"]
  a = models.get_model("resnet34", num_classes=10).apply(unrolled, x)
  b = models.get_model("resnet34", num_classes=10, scan_blocks=True).apply(scanned, x)
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0)
  _assert_same_state_dict(pretrained.to_torchvision(scanned), tv.state_dict())


def test_conversion_refuses_what_is_not_the_named_resnet():
  sd = torchvision_model("resnet18").state_dict()
  with pytest.raises(WeightsError, match="is a resnet18 .*not a resnet50"):
    pretrained.from_torchvision(sd, "resnet50")
  with pytest.raises(WeightsError, match="resnet18, resnet34, resnet50, resnet101, resnet152"):
    pretrained.from_torchvision(sd, "resnet20")
  broken = dict(sd)
  del broken["layer2.0.bn1.running_var"]
  with pytest.raises(WeightsError, match=r"no 'layer2.0.bn1.running_var'"):
    pretrained.from_torchvision(broken)
  with pytest.raises(WeightsError, match="not part of torchvision's resnet18: extra.weight"):
    pretrained.from_torchvision({**sd, "extra.weight": torch.zeros(1)})
  # wide_resnet50_2 has resnet50's keys with wider blocks: the shapes give it away.
  wide = torchvision.models.wide_resnet50_2().state_dict()
  with pytest.raises(WeightsError, match=r"stage1_block1/.* has shape \(128,.*expects \(64,.*wide_resnet"):
    pretrained.from_torchvision(wide)
  # DataParallel's "module." prefix and half-precision tensors are accepted.
  wrapped = {f"module.{k}": v.half() if v.is_floating_point() else v for k, v in sd.items()}
  half = pretrained.from_torchvision(wrapped)
  np.testing.assert_array_equal(half["params"]["stem_conv"]["kernel"],
                                sd["conv1.weight"].half().float().numpy().transpose(2, 3, 1, 0))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
def test_state_dict_files_round_trip(tmp_path, suffix):
  sd = torchvision_model("resnet18").state_dict()
  path = pretrained.save_state_dict(pretrained.to_torchvision(pretrained.from_torchvision(sd)),
                                    str(tmp_path / f"weights{suffix}"))
  _assert_same_state_dict(pretrained.load_state_dict(path), sd)


def test_pth_checkpoints_that_wrap_the_state_dict_are_unwrapped(tmp_path):
  sd = torchvision_model("resnet18").state_dict()
  torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pth")
  _assert_same_state_dict(pretrained.load_state_dict(str(tmp_path / "ckpt.pth")), sd)
  with pytest.raises(WeightsError, match="unknown state-dict format '.h5'"):
    pretrained.load_state_dict(str(tmp_path / "weights.h5"))


# --- Downloads: torchvision's URLs, a checksum from the file name, a cache. ---


@pytest.fixture
def server(tmp_path):
  """(folder served, base URL, request paths): python's http.server on 127.0.0.1 in a thread."""
  root, hits = tmp_path / "www", []
  root.mkdir()

  class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, directory=str(root), **kwargs)

    def do_GET(self):
      hits.append(self.path)
      super().do_GET()

    def log_message(self, *args):
      pass

  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  yield root, f"http://127.0.0.1:{httpd.server_address[1]}", hits
  httpd.shutdown()
  httpd.server_close()


def publish(root: pathlib.Path, arch: str = "resnet18") -> tuple[str, dict]:
  """Saves a torchvision state dict as torchvision names its files: <arch>-<sha256 prefix>.pth."""
  sd = torchvision_model(arch).state_dict()
  tmp = root / "upload.pth"
  torch.save(sd, tmp)
  digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
  name = f"{arch}-{digest[:8]}.pth"
  tmp.rename(root / name)
  return name, sd


def test_download_checks_the_checksum_and_caches(server, tmp_path, monkeypatch):
  root, base, hits = server
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # not the machine's torch cache
  name, sd = publish(root)
  cache = tmp_path / "cache"
  path = dl.download(f"{base}/{name}", str(cache))
  assert path == str(cache / name) and hits == [f"/{name}"]
  _assert_same_state_dict(pretrained.load_state_dict(path), sd)
  assert dl.download(f"{base}/{name}", str(cache)) == path and len(hits) == 1  # from the cache
  # A cached file that no longer matches its checksum is replaced by a fresh download.
  with open(path, "r+b") as f:
    f.write(b"garbage")
  assert dl.download(f"{base}/{name}", str(cache)) == path and len(hits) == 2
  _assert_same_state_dict(pretrained.load_state_dict(path), sd)
  # A file URL works the same way.
  assert dl.download((root / name).as_uri(), str(tmp_path / "cache2")) == str(tmp_path / "cache2" / name)
  # torch.hub's cache is used (after the same check) when the file is already there.
  hub = tmp_path / "torch_home" / "hub" / "checkpoints"
  hub.mkdir(parents=True)
  (hub / name).write_bytes((root / name).read_bytes())
  assert dl.download(f"{base}/{name}", str(tmp_path / "cache3")) == str(hub / name)
  assert len(hits) == 2


def test_corrupt_download_is_refused_and_not_cached(server, tmp_path):
  root, base, _ = server
  name, _ = publish(root)
  corrupt = name.replace(name.split("-")[1][:8], "deadbeef")
  (root / corrupt).write_bytes((root / name).read_bytes()[:-100])  # truncated, and not that hash
  cache = tmp_path / "cache"
  with pytest.raises(dl.DownloadError, match="checksum mismatch: SHA-256 [0-9a-f]{64} does not "
                                             "start with deadbeef"):
    dl.download(f"{base}/{corrupt}", str(cache))
  assert os.listdir(cache) == []  # neither the file nor a partial download stays
  with pytest.raises(dl.DownloadError, match="could not download"):
    dl.download(f"{base}/resnet18-0123abcd.pth", str(cache))  # 404
  with pytest.raises(WeightsError, match="carries no checksum"):
    dl.download(f"{base}/weights.pth", str(cache))
  assert os.listdir(cache) == []


def test_our_urls_are_torchvisions():
  for name, table in dl.TORCHVISION_WEIGHTS.items():
    enum = getattr(torchvision.models, f"ResNet{name[len('resnet'):]}_Weights")
    assert table == {w.name: w.url for w in enum}, name
    assert dl.weights_url(name) == enum.DEFAULT.url
  with pytest.raises(WeightsError, match="no IMAGENET1K_V2 weights for resnet18"):
    dl.weights_url("resnet18", "IMAGENET1K_V2")


def test_load_torchvision_by_weights_name_downloads_converts_and_caches(server, tmp_path,
                                                                       monkeypatch):
  root, base, hits = server
  name, sd = publish(root)
  monkeypatch.setitem(dl.TORCHVISION_WEIGHTS, "resnet18", {"IMAGENET1K_V1": f"{base}/{name}"})
  monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
  for _ in range(2):
    variables = pretrained.load_torchvision("resnet18")  # DEFAULT = IMAGENET1K_V1 for resnet18
  assert len(hits) == 1 and os.path.isfile(tmp_path / "cache" / "weights" / name)
  _assert_same_state_dict(pretrained.to_torchvision(variables), sd)
  with pytest.raises(WeightsError, match="neither a file, a URL, nor"):
    pretrained.load_torchvision("resnet18", "no/such/file.pth")


# --- `resnet-jax convert` -> eval, and fine-tuning from the converted workdir. ---


def test_cli_convert_then_eval_matches_torchvision(tmp_path, capsys):
  tv = torchvision_model("resnet18", seed=5)
  source = str(tmp_path / "resnet18.pth")
  torch.save(tv.state_dict(), source)
  workdir = str(tmp_path / "converted")
  # Synthetic RGB data with 1000 classes stands in for ImageNet (the eval path is the same).
  args = ["convert", "--from", "torchvision", "resnet18", source, "--workdir", workdir,
          "--config", "configs/quickstart.py", "--config.dataset=synthetic", "--config.image_size=32",
          "--config.num_devices=1", "--config.eval_batch_size=64"]
  assert cli.main(args) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert (summary["model"], summary["num_classes"], summary["step"]) == ("resnet18", 1000, 0)
  config = json.loads((tmp_path / "converted" / "config.json").read_text())
  assert (config["model"], config["normalization"], config["num_classes"]) == (
      "resnet18", "torchvision", 1000)

  assert cli.main(["eval", "--workdir", workdir]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  trainer, state = trainer_lib.restore(workdir)
  converted = pretrained.from_torchvision(tv.state_dict())
  for a, b in zip(jax.tree_util.tree_leaves({"params": state.params, "batch_stats": state.batch_stats}),
                  jax.tree_util.tree_leaves(converted)):
    np.testing.assert_array_equal(np.asarray(a), b)
  # The eval loss over the whole test split, from torchvision's model on the same images.
  images = torch.from_numpy(trainer.dataset.test_images.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    loss = torch.nn.functional.cross_entropy(
        tv(images), torch.from_numpy(trainer.dataset.test_labels).long()).item()
  assert result["step"] == 0 and result["eval/loss"] == pytest.approx(loss, abs=1e-4)

  assert cli.main(args) == 2  # the workdir already holds a checkpoint
  assert "already holds checkpoints" in capsys.readouterr().err
  assert cli.main(["convert", "--from", "torchvision", "resnet20", source, "--workdir",
                   str(tmp_path / "other")]) == 2
  assert "resnet18, resnet34" in capsys.readouterr().err

  # Fine-tuning starts from the converted workdir with a new head for another class count.
  ft = trainer_lib.Trainer(small_config(model="resnet18", dataset="synthetic", image_size=32,
                                        num_classes=5, num_devices=1, init_from=workdir))
  seeded = ft.first_state()
  assert seeded.params["head"]["kernel"].shape == (512, 5)
  np.testing.assert_array_equal(np.asarray(seeded.params["stage4_block2"]["conv2"]["kernel"]),
                                converted["params"]["stage4_block2"]["conv2"]["kernel"])
  np.testing.assert_array_equal(np.asarray(seeded.batch_stats["stem_bn"]["var"]),
                                converted["batch_stats"]["stem_bn"]["var"])


def test_convert_into_a_bucket_workdir(gcs_env, tmp_path, capsys):
  """`convert` writes its checkpoint and config through RunFiles into a gs:// workdir (the GCS
  emulator, tests/gcs.py), and what it wrote restores to torchvision's weights exactly."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from tests import gcs  # pylint: disable=g-import-not-at-top

  tv = torchvision_model("resnet18", seed=3)
  source = str(tmp_path / "resnet18.pth")
  torch.save(tv.state_dict(), source)
  workdir = f"gs://{gcs.BUCKET}/{os.getpid()}-{tmp_path.name}/converted"
  assert cli.main(["convert", "--from", "torchvision", "resnet18", source, "--workdir", workdir,
                   "--config", "configs/quickstart.py", "--config.dataset=synthetic",
                   "--config.image_size=32", "--config.num_devices=1"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert (summary["model"], summary["step"]) == ("resnet18", 0)
  config = json.loads((epath.Path(workdir) / "config.json").read_text())
  assert (config["model"], config["normalization"]) == ("resnet18", "torchvision")
  _, state = trainer_lib.restore(workdir)
  converted = pretrained.from_torchvision(tv.state_dict())
  for a, b in zip(jax.tree_util.tree_leaves({"params": state.params, "batch_stats": state.batch_stats}),
                  jax.tree_util.tree_leaves(converted)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_convert_writes_torchvisions_network_not_the_paper_presets(tmp_path, capsys):
  """configs/imagenet.py:resnet50 is the paper's v1 network (stride on the first 1x1); torchvision's
  is v1.5. Both have the same shapes, so only the config can say which one the weights belong to."""
  tv = torchvision_model("resnet50", seed=1)
  source = str(tmp_path / "resnet50.pth")
  torch.save(tv.state_dict(), source)
  workdir = str(tmp_path / "converted")
  assert cli.main(["convert", "--from", "torchvision", "resnet50", source, "--workdir", workdir]) == 0
  config = json.loads((tmp_path / "converted" / "config.json").read_text())
  assert (config["stride_placement"], config["eval_crops"]) == ("v1.5", "center")
  capsys.readouterr()
  assert cli.main(["convert", "--from", "torchvision", "resnet50", source, "--workdir",
                   str(tmp_path / "v1"), "--config.stride_placement=v1"]) == 2
  assert "stride_placement='v1.5'" in capsys.readouterr().err
  assert not (tmp_path / "v1" / "checkpoints").exists()


def test_conversion_config_forces_torchvisions_network_and_applies_overrides_last():
  from resnet_jax.pretrained import convert  # pylint: disable=g-import-not-at-top
  config = convert.conversion_config("resnet18", overrides={"eval_crops": "ten"})
  assert (config.model, config.normalization, config.stride_placement, config.eval_crops) == (
      "resnet18", "torchvision", "v1.5", "ten")
  with pytest.raises(ConfigError, match="resnet18, resnet34"):
    convert.conversion_config("resnet20")
