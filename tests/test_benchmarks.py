"""Smoke tests for the reference train steps in benchmarks/ (tiny, CPU)."""

import importlib.util
import json
import math
import os
import subprocess

import numpy as np
import pytest

from resnet_jax import config as config_lib
from resnet_jax.run.errors import ConfigError
from tests.helpers import load_script

BENCH_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _load(name):
  return load_script(os.path.join(BENCH_DIR, f"{name}.py"), f"benchmarks_{name}")


def _check(figures):
  for key in ("step_ms_median", "images_per_sec", "compile_s"):
    value = figures[key]
    assert math.isfinite(value) and value > 0, (key, value)


def test_minimal_flax_run():
  _check(_load("minimal_flax").run(depth=8, batch_size=8, steps=2))


def test_minimal_steps_run_in_bfloat16():
  figures = _load("minimal_flax").run(depth=8, batch_size=8, steps=1, dtype="bfloat16")
  _check(figures)
  assert figures["dtype"] == "bfloat16"
  torch = pytest.importorskip("torch")
  threads = torch.get_num_threads()
  try:
    figures = _load("minimal_torch").run(depth=8, batch_size=8, steps=1, threads=1, dtype="bfloat16")
  finally:
    torch.set_num_threads(threads)
  _check(figures)
  assert figures["dtype"] == "bfloat16"


def test_compare_passes_dtype_and_fusion_and_writes_the_table_with_cpu_and_date(tmp_path, monkeypatch):
  compare = _load("compare")
  ours = compare.command("ours", 20, 128, 10, dtype="bfloat16", cpu_fusion="eltwise,reduce,conv")
  assert ours[-3:] == ["--dtype", "bfloat16", "--cpu-fusion=eltwise,reduce,conv"], ours
  for runner in ("flax", "torch"):
    assert compare.command(runner, 20, 128, 10, dtype="bfloat16")[-2:] == ["--dtype", "bfloat16"]
  seen = []

  def run_one(runner, cmd, env, timeout):  # the subprocesses' JSON, without running them
    seen.append(cmd)
    return {"step_ms_median": {"ours": 300.0, "flax": 200.0, "torch": 250.0}[runner]}, None
  monkeypatch.setattr(compare, "run_one", run_one)
  monkeypatch.setattr(compare.importlib.util, "find_spec", lambda name: object())
  out = tmp_path / "table.md"
  compare.main(["--depths", "20", "--dtype", "bfloat16", "--out", str(out)])
  assert len(seen) == 3 and all("bfloat16" in cmd for cmd in seen)
  text = out.read_text()
  head = text.splitlines()[0]
  assert compare.cpu_model() in head and "bfloat16" in head and "UTC" in head, head
  assert "| 20 | 300.0 | 200.0 | 250.0 | 1.50 | 1.20 | 0.80 |" in text, text


def test_minimal_flax_network_shape():
  mf = _load("minimal_flax")
  import jax  # pylint: disable=g-import-not-at-top
  params = mf.create_state(depth=8).params
  kernels = [p for path, p in jax.tree_util.tree_leaves_with_path(params)
             if path[-1].key == "kernel"]
  # ResNet-8: stem conv + 3 stages x 1 block x 2 convs + dense; option A
  # shortcuts add no parameters.
  assert len(kernels) == 8
  assert sum(p.size for p in jax.tree_util.tree_leaves(params)) == 75_290


def test_minimal_torch_run():
  torch = pytest.importorskip("torch")
  threads = torch.get_num_threads()
  try:
    # One thread: OpenMP barriers stall for whole scheduler ticks when another
    # process holds a core, which makes a tiny step take seconds.
    _check(_load("minimal_torch").run(depth=8, batch_size=8, steps=2,
                                      threads=1))
  finally:
    torch.set_num_threads(threads)


def test_minimal_torch_matches_flax_parameter_count():
  pytest.importorskip("torch")
  model = _load("minimal_torch").build_model(8)
  assert sum(p.numel() for p in model.parameters()) == 75_290


def test_torch_twin_refuses_what_it_does_not_build():
  twin = _load("torch_twin")
  from resnet_jax.config import default_config  # pylint: disable=g-import-not-at-top
  config = default_config()
  assert twin.check_config(config) == 20
  for key, value, match in [("model", "plain20", "residual nets only"),
                            ("model", "resnet50", "residual nets only"),
                            ("momentum_style", "caffe", "--config.momentum_style='optax'"),
                            ("zero_init_residual", True, "zero_init_residual")]:
    bad = default_config()
    bad[key] = value
    with pytest.raises(ConfigError, match=match):
      twin.check_config(bad)


def test_torch_twin_trains_on_our_batches(capsys):
  pytest.importorskip("torch")
  from resnet_jax.config import default_config  # pylint: disable=g-import-not-at-top
  config = default_config()
  config.update(model="resnet8", dataset="synthetic", batch_size=8, learning_rate=0.01)
  result = _load("torch_twin").run(config, steps=3, progress_every=2)
  assert len(result["loss"]) == len(result["accuracy"]) == 3
  assert "twin step 2/3: loss " in capsys.readouterr().err  # progress of a long run
  assert all(math.isfinite(l) for l in result["loss"])
  assert 0.0 <= result["eval_accuracy"] <= 1.0 and math.isfinite(result["eval_loss"])
  with pytest.raises(ConfigError, match="32x32x3 and 10"):
    config.dataset = "digits"
    _load("torch_twin").run(config, steps=1)


def test_twin_group_batch_norm_matches_ours():
  """The twin's BN over groups of examples normalises as resnet_jax's BatchNorm does."""
  torch = pytest.importorskip("torch")
  import jax  # pylint: disable=g-import-not-at-top
  from resnet_jax.models.layers import BatchNorm  # pylint: disable=g-import-not-at-top
  model = _load("minimal_torch").build_model(8, bn_group_size=4)
  bn = model.stem[1]
  x = np.random.default_rng(0).standard_normal((8, 16, 5, 5)).astype(np.float32)
  bn.train()
  ours = BatchNorm(group_size=4)
  y, updates = ours.apply(ours.init(jax.random.key(0), x.transpose(0, 2, 3, 1)),
                          x.transpose(0, 2, 3, 1), mutable=["batch_stats"])
  theirs = bn(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(theirs, np.asarray(y), atol=1e-5)
  np.testing.assert_allclose(bn.running_mean.numpy(), updates["batch_stats"]["mean"], atol=1e-6)
  count = 4 * 5 * 5  # PyTorch keeps the unbiased variance
  # Both start at 1 and take 0.1 of the new statistic: ours 0.9 + 0.1 v, PyTorch 0.9 + 0.1 v n/(n-1).
  ours_var = np.asarray(updates["batch_stats"]["var"])
  np.testing.assert_allclose(bn.running_var.numpy(), 0.9 + (ours_var - 0.9) * count / (count - 1),
                             atol=1e-5)


def test_twin_compare_table_reads_the_spike_and_the_plateau_exit(tmp_path):
  twin_compare = _load("twin_compare")
  # Seed 0 spikes to 20 (one step; 10-step mean 11) and leaves the plateau (10-step mean < 2.0) at
  # step 30; seed 1 at step 20.
  ours0 = [2.3] * 10 + [20.0] + [10.0] * 9 + [1.5] * 80
  ours1 = [2.3] * 10 + [1.9] * 90
  twin = [2.3] * 100
  results = [{"model": "resnet56", "steps": 100, "seed": s,
              "ours": {"loss": loss, "eval_accuracy": 0.5 + s / 10},
              "twin": {"loss": twin, "eval_accuracy": 0.4}} for s, loss in enumerate((ours0, ours1))]
  table = twin_compare.table(results).splitlines()
  assert "peak 10-step loss" in table[0] and "first step below 2.0" in table[0]
  ours_row = table[2].split(" | ")
  assert ours_row[5].startswith("6.650 +- ")       # 10-step peaks 11.0 and 2.3
  assert ours_row[6].startswith("11.150 +- ")      # one-step peaks 20.0 and 2.3
  assert ours_row[7].startswith("25 +- 7")          # steps 30 and 20
  assert ours_row[9].startswith("55.00 +- 7.07")   # test accuracy, mean +- std over the seeds
  assert table[3].split(" | ")[7].startswith("nan")  # the twin never left it
  twin_compare.plot(results, str(tmp_path / "twin.png"))
  assert (tmp_path / "twin.png").stat().st_size > 10_000


def test_twin_lockstep_starts_the_twin_from_our_weights():
  """Step 1 from our weights copied into the twin is the same computation: equal up to rounding."""
  pytest.importorskip("torch")
  from resnet_jax.config import default_config  # pylint: disable=g-import-not-at-top
  config = default_config()
  config.update(model="resnet8", dataset="synthetic", batch_size=8, learning_rate=0.01,
                num_devices=1)
  first = _load("twin_lockstep").run(config, steps=1, report_steps=set())[0]
  assert first["step"] == 1
  assert abs(first["loss_ours"] - first["loss_twin"]) < 1e-5 * first["loss_twin"]
  for kind in ("grad_norm", "weights", "bn_affine", "running_stats"):
    assert first[kind] < 1e-3, (kind, first[kind])


def test_tpu_compile_rows_are_128_images_per_chip_and_tabulate(tmp_path):
  tpu_compile = _load("tpu_compile")
  rows = {r["name"]: r for r in tpu_compile.rows()}
  # v4-8 and v5p-8 are 4 chips (8 TensorCores), v5e-8 and v6e-8 are 8; v5e-16 is 4 hosts of 4.
  for name, batch in (("resnet50-bfloat16-v4-8", 512), ("resnet50-bfloat16-v5p-8", 512),
                      ("resnet50-bfloat16-v5e-8", 1024), ("resnet50-bfloat16-v5e-16", 2048)):
    assert f"--config.batch_size={batch}" in rows[name]["overrides"], name
  folder = tmp_path / "rows"
  folder.mkdir()
  row = {"model": "resnet50", "dtype": "bfloat16", "topology": "v5e-8", "hosts": 1,
         "batch_per_chip": 128, "devices_per_chip": 1,
         "hbm": {"needed": 5 * 2**30, "chip": 16 * 2**30, "fits": True},
         "flops": {"ratio": 0.98}, "collectives": {"all-reduce": {"count": 2, "bytes": 55.6e6}},
         "param_bytes": 102.2e6,
         "estimate": {"step_ms": 60.7, "bound": "HBM bandwidth", "images_per_sec_per_chip": 2109.0},
         "host": {"cores_needed": 38.0, "vcpus": 224.0}}
  (folder / "resnet50-bfloat16-v5e-8.json").write_text(json.dumps(row))
  lines = tpu_compile.table(str(folder)).splitlines()
  assert len(lines) == 3 and lines[0].count("|") == lines[2].count("|")
  assert lines[2] == ("| resnet50 | bfloat16 | v5e-8 (1 host) | 128 | 5.00 / 16 | yes | 0.98 | "
                      "55.6 (102.2) | 60.7 | HBM bandwidth | 2,109 | 38 / 224 |")


def test_input_pipeline_benchmark_pipelines_make_normalised_batches():
  from resnet_jax.bench.photos import photo_jpegs  # pylint: disable=g-import-not-at-top

  bench = _load("input_pipeline")
  jpegs = photo_jpegs(3)
  assert all(j[:2] == b"\xff\xd8" and 20_000 < len(j) < 120_000 for j in jpegs)  # JPEGs, ~40 KiB
  assert photo_jpegs(3) == jpegs  # a pure function of (count, seed)
  for train in (True, False):
    batch = bench.ours(train, normalize=True)(jpegs, 0)  # as a host that normalises
    assert batch.shape == (3, 224, 224, 3) and batch.dtype == np.float32
    assert -2.2 < batch.min() < 0 < batch.max() < 2.7  # torchvision's mean and std
    assert bench.ours(train)(jpegs, 0).dtype == np.uint8  # as a run's host: the device normalises
  if importlib.util.find_spec("torchvision"):
    assert bench.torchvision_pil(True)(jpegs, 0).shape == (3, 3, 224, 224)


def test_gpu_compile_rows_are_256_images_per_gpu_and_tabulate_against_the_usable_memory(tmp_path):
  gpu_compile = _load("gpu_compile")
  rows = {r["name"]: r for r in gpu_compile.rows()}
  for name, batch in (("resnet50-bfloat16-h100-1", 256), ("resnet50-bfloat16-h100-8", 2048),
                      ("resnet50-bfloat16-h100-16", 4096)):  # two hosts of 8
    assert f"--config.batch_size={batch}" in rows[name]["overrides"], name
  assert rows["resnet50-modern-float32-a100-80gb-8"]["label"] == "resnet50-modern"
  folder = tmp_path / "rows"
  folder.mkdir()
  row = {"model": "resnet50", "dtype": "bfloat16", "topology": "h100-1", "hosts": 1,
         "batch_per_chip": 256, "devices_per_chip": 1,
         "hbm": {"needed": 10.78 * 2**30, "chip": 80e9, "usable": 60e9, "fits": True},
         "flops": {"ratio": 0.96}, "collectives": {}, "param_bytes": 102.2e6,
         "estimate": {"step_ms": 29.4, "bound": "HBM bandwidth", "images_per_sec_per_chip": 8700.0},
         "host": {"cores_needed": 39.0, "vcpus": 26.0}}
  (folder / "resnet50-bfloat16-h100-1.json").write_text(json.dumps(row))
  gpu_compile.main(["--out", str(tmp_path), "--only", "nothing"])  # tabulates what is there
  lines = (tmp_path / "table.md").read_text().splitlines()
  assert "| machine |" in lines[0] and "memory needed / usable GiB" in lines[0]
  assert lines[2] == ("| resnet50 | bfloat16 | h100-1 (1 host) | 256 | 10.78 / 56 | yes | 0.96 | "
                      "0.0 (102.2) | 29.4 | HBM bandwidth | 8,700 | 39 / 26 |")


@pytest.mark.parametrize("smoke", [True, False])
def test_gpu_benchmarks_check_compiles_the_config_each_case_benchmarks(smoke):
  """`benchmarks/gpu.sh --check TOPOLOGY` compiles, for each case, the config `resnet-jax bench`
  builds for it (resnet_jax.bench.step): same model, batch, dtype, data path and dispatch size."""
  from resnet_jax.cli.commands import split_overrides  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import validation  # pylint: disable=g-import-not-at-top

  gpu = _load("gpu")
  for case in gpu.cases(smoke):
    cmd = gpu.compile_command(case, "h100-1")
    assert cmd[3:7] == ["compile", "--topology", "h100-1", "--config"]
    config = config_lib.load(cmd[7], split_overrides(cmd[8:]))
    validation.validate(config)
    args = dict(zip(case[::2], case[1::2])) if "--data-on-device" not in case else {}
    if args:
      assert config.model == args["--model"] and config.batch_size == int(args["--batch-size"])
      assert config.dtype == args.get("--dtype", "float32")
    assert config.data_on_device == ("--data-on-device" in case)
    assert config.steps_per_dispatch == (int(case[-1]) if "--steps-per-dispatch" in case else 1)
  out = subprocess.run(["bash", "benchmarks/gpu.sh", "--help"], capture_output=True, text=True,
                       check=True).stdout
  assert "--check h100-1" in out


def test_step_profile_splits_the_traced_step_into_categories_with_all_three_convolutions(tmp_path):
  profile = _load("step_profile")
  out = tmp_path / "profile.md"
  result = profile.profile_ours("resnet8", 8, "float32", None, steps=1)
  ms = result["ms"]
  assert set(ms) == set(profile.CATEGORIES)
  assert math.isclose(sum(ms.values()), result["traced_ms"], rel_tol=1e-6), result
  # Each runtime thread's span of the step, shared out whole: its ops' events and every gap.
  assert 0 < result["events_ms"] < result["traced_ms"] <= 1.1 * result["threads"] * result["wall_ms"]
  for category in profile.CONV_CATEGORIES:
    assert ms[category] > 0, (category, ms)
  args = profile.argparse.Namespace(model="resnet8", batch_size=8, dtype="float32",
                                    cpu_fusion=None, steps=1)
  out.write_text(profile.table({"ours": result}, args))
  text = out.read_text()
  assert text.splitlines()[0].startswith(profile.cpu_model()) and "conv backward-weight" in text
  assert f"holds {result['large_copies']} copies or transposes" in text


def test_step_profile_tells_the_three_convolutions_apart_from_the_hlo():
  profile = _load("step_profile")
  hlo = """HloModule jit_train_step, entry_computation_layout={()}

ENTRY %main.1 (x: f32[8,32,32,16], k: f32[3,3,16,16]) -> f32[16,3,3,16] {
  %x = f32[8,32,32,16]{3,2,1,0} parameter(0)
  %k = f32[3,3,16,16]{3,2,1,0} parameter(1)
  %fwd = f32[8,32,32,16]{3,2,1,0} convolution(%x, %k), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/jvp(ResNet)/stage1_block1/conv1/conv_general_dilated"}
  %din = f32[8,32,32,16]{3,2,1,0} convolution(%fwd, %k), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/transpose(jvp(ResNet))/stage1_block1/conv2/conv_general_dilated"}
  %strided = f32[8,32,32,16]{3,2,1,0} convolution(%fwd, %k), window={size=3x3 pad=1_2x1_2 lhs_dilate=2x2}, dim_labels=b01f_01io->b01f
  %t = f32[16,32,32,8]{3,2,1,0} transpose(%x), dimensions={3,1,2,0}
  ROOT %dw = f32[16,3,3,16]{3,2,1,0} convolution(%t, %t), window={size=32x32 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}
"""
  instructions, computations = profile.parse_hlo(hlo)
  kinds = {n: profile.categorize(n, instructions, computations)
           for n in ("fwd", "din", "strided", "dw", "t")}
  assert kinds == {"fwd": "conv forward", "din": "conv backward-input", "strided": "conv backward-input",
                   "dw": "conv backward-weight", "t": "copies / transposes"}, kinds
  consumers = profile.consumers_of(instructions, computations, "main.1")
  assert consumers["fwd"] == {"din", "strided"} and consumers["t"] == {"dw"}
  # The batch-minor copy feeding the weight gradient (512 KiB) is a layout copy; a kernel is not.
  assert profile.layout_copies(instructions, computations, "main.1", min_bytes=1 << 19) == [
      ("t", "f32[16,32,32,8]{3,2,1,0}")]
  assert profile.layout_copies(instructions, computations, "main.1", min_bytes=(1 << 19) + 1) == []


def test_soak_kinds_are_a_comma_list_of_known_interruptions():
  soak = _load("soak")
  assert soak.parse_kinds("server_restart") == ("server_restart",)
  assert soak.parse_kinds("kill9, server_restart,kill9") == ("kill9", "server_restart")
  assert soak.DEFAULT_KINDS == ("kill9", "sigterm", "bucket_away")
  with pytest.raises(SystemExit, match=r"--kinds 'kill9,restart': unknown restart; give a comma "
                                       r"list among kill9, sigterm, bucket_away, server_restart"):
    soak.parse_kinds("kill9,restart")
  with pytest.raises(SystemExit, match="empty"):
    soak.parse_kinds(",")
