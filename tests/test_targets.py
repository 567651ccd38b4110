"""Compiling for targets we do not have: TPU slices through libtpu (the e2e tier: each compile takes
about a minute on 2 cores), the roofline and HLO reading on hand-made numbers, the CUDA lowering."""

import json
import types

import pytest

from resnet_jax import cli
from resnet_jax.cli import commands
from resnet_jax.config import default_config
from resnet_jax.run import process
from resnet_jax.run.errors import ConfigError
from resnet_jax.targets import analysis, chips
from resnet_jax.targets import compile as target
from resnet_jax.targets import gpu


def _tiny(**overrides):
  c = default_config()
  c.update(model="resnet8", dataset="cifar10", total_steps=10, lr_decay_steps=(),
           eval_every_steps=0, checkpoint_every_steps=0, log_every_steps=1)
  c.update(overrides)
  return c


def test_roofline_on_hand_made_numbers():
  chip = chips.Chip("x", peak_flops=100e12, hbm_bytes=16 * 2**30, hbm_bandwidth=1e12,
                    allreduce_bandwidth=100e9, vcpus_per_chip=10, source="hand-made")
  r = analysis.roofline(flops=2e12, bytes_accessed=10e9, collective_bytes=1e9, chip=chip, chips=8)
  assert (r.compute_s, r.memory_s, r.collective_s) == pytest.approx((0.02, 0.01, 0.01))
  assert r.step_s == pytest.approx(0.02) and r.bound == "compute"
  r = analysis.roofline(flops=1e12, bytes_accessed=30e9, collective_bytes=1e9, chip=chip, chips=1)
  assert r.bound == "HBM bandwidth" and r.collective_s == 0.0  # one chip: nothing to reduce


def test_collectives_are_read_from_optimised_hlo():
  hlo = """
  %all-reduce.60 = (f32[16]{0:T(128)S(1)}, f32[16]{0:T(128)S(1)}) all-reduce(%a, %b), channel_id=2
  %all-reduce.7 = bf16[3,3,64,64]{3,2,1,0} all-reduce(%g), channel_id=3, to_apply=%add
  ROOT %ag = f32[8,128]{1,0} all-gather-start(%x), dimensions={0}
  %done = f32[8,128]{1,0} all-gather-done(%ag)
  %not = f32[4]{0} add(%p, %q)
  """
  assert analysis.collectives(hlo) == {
      "all-reduce": {"count": 2, "bytes": 2 * 16 * 4 + 3 * 3 * 64 * 64 * 2},
      "all-gather": {"count": 1, "bytes": 8 * 128 * 4}}


def test_known_slices_and_names():
  assert chips.find("v5e-8").topology == "v5e:2x4" and chips.find("v5litepod-8").name == "v5e-8"
  assert chips.find("v4:2x2x1").name == "v4-8" and chips.find("v4-8").megacore
  assert chips.find("v9-8") is None
  assert chips.find("v5e-16").cloud_name == "v5litepod-16" and chips.find("v4-8").cloud_name == "v4-8"
  with pytest.raises(ConfigError, match=r"unknown TPU topology 'v9-8'; known: v3-8 \(v3:2x2\)"):
    target.find_slice("v9-8")


def test_libtpu_is_told_of_a_host_without_chips_and_nothing_else_changes(tmp_path):
  # Off a TPU VM libtpu would warn that it cannot describe the host; on one, it reads the metadata.
  none = [str(tmp_path / "accel*")]
  assert process.libtpu_host_defaults({}, "v5litepod-16", none) == {
      "TPU_ACCELERATOR_TYPE": "v5litepod-16", "TPU_WORKER_HOSTNAMES": "localhost"}
  assert process.libtpu_host_defaults({"TPU_WORKER_HOSTNAMES": "h0,h1"}, "v4-8", none) == {
      "TPU_ACCELERATOR_TYPE": "v4-8"}
  (tmp_path / "accel0").touch()
  assert process.libtpu_host_defaults({}, "v4-8", none) == {}


def test_a_step_the_compiler_refuses_for_want_of_hbm_is_reported_as_not_fitting(monkeypatch):
  # libtpu does not compile a program larger than HBM: it raises, and that is the answer "no".
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
             "temporaries (16.46G) exceeds available HBM (15.75G).")
  monkeypatch.setattr(target, "devices_of", lambda slice_: [types.SimpleNamespace(process_index=0)] * 8)
  monkeypatch.setattr(target, "build", lambda config, devices: None)
  monkeypatch.setattr(target, "compile_step", lambda trainer: (_ for _ in ()).throw(RuntimeError(message)))
  r = target.compile_for(_tiny(batch_size=4096), "v5e-8")
  assert (r["hbm"]["fits"], r["batch_per_chip"], r["chips"]) == (False, 512, 8)
  assert r["hbm"]["needed"] == pytest.approx(16.46 * 2**30)
  text = commands.describe_compile(r)
  assert "does NOT fit, 16.46 GiB needed of 16 GiB" in text and "RESOURCE_EXHAUSTED" in text
  monkeypatch.setattr(target, "compile_step", lambda trainer: (_ for _ in ()).throw(RuntimeError("other")))
  with pytest.raises(RuntimeError, match="other"):  # any other failure is not an answer
    target.compile_for(_tiny(batch_size=4096), "v5e-8")


def test_max_batch_doubles_then_bisects_in_multiples_of_8(monkeypatch):
  monkeypatch.setattr(target, "devices_of", lambda slice_: [None] * 4)
  asked = []

  def fake_compile(config, topology, per_chip):
    asked.append(per_chip)
    return {"hbm": {"fits": per_chip <= 300, "needed": per_chip, "chip": 300}}
  monkeypatch.setattr(target, "compile_for", fake_compile)
  batch, report = target.max_batch(_tiny(batch_size=512), "v5e-4", say=lambda _: None)
  assert batch == 296 and report["hbm"]["fits"]  # the largest multiple of 8 that fits
  assert asked[:3] == [128, 256, 512]  # from the config's 128 per chip, doubling
  assert len(asked) <= 8
  batch, _ = target.max_batch(_tiny(batch_size=8192), "v5e-4", say=lambda _: None)
  assert batch == 296  # from 2048 per chip, halving first


def test_the_cuda_lowering_has_no_cpu_only_piece_and_a_real_loop():
  lowered = gpu.lower_for_cuda(_tiny(batch_size=32, steps_per_dispatch=2, log_every_steps=2,
                                     data_on_device=True, augment="cifar"))
  assert lowered["compiler_options"] == {}  # cpu_fusion stays on the CPU
  for program in ("train", "eval"):
    assert lowered[program]["cpu_only_calls"] == [], lowered[program]
  assert lowered["train"]["while_loops"] >= 1  # K steps are a scan on GPU, unrolled only on CPU


def test_bad_input_is_exit_2_with_the_fix(capsys, monkeypatch):
  args = ["compile", "--topology", "v9-8", "--config", "configs/cifar10.py:resnet20"]
  assert cli.main(args) == 2
  assert "known: v3-8 (v3:2x2), v4-8 (v4:2x2x1)" in capsys.readouterr().err
  assert cli.main(["compile", "--topology", "v5e-8", "--config", "configs/cifar10.py:resnet20",
                   "--config.parallelism=pmap"]) == 2
  assert "compiles the jit strategy" in capsys.readouterr().err
  real = target.importlib.util.find_spec
  monkeypatch.setattr(target.importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real(name, *a))
  with pytest.raises(Exception, match=r"pip install 'resnet-jax\[tpu\]'"):
    target.devices_of(chips.find("v5e-8"))


@pytest.mark.e2e
@pytest.mark.timeout(900)
@pytest.mark.parametrize("topology,hosts", [("v5e-4", 1), ("v5e-16", 4)])
def test_resnet8_compiles_for_a_single_and_a_multi_host_slice(topology, hosts, capfd, monkeypatch):
  for name in ("ALLOW_MULTIPLE_LIBTPU_LOAD", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)  # the command sets them; they go with the test
  n = int(topology.split("-")[1])  # chips
  assert cli.main(["compile", "--topology", topology, "--config", "configs/cifar10.py:resnet8",
                   f"--config.batch_size={32 * n}", f"--config.eval_batch_size={64 * n}"]) == 0  # fits
  out = capfd.readouterr()  # libtpu writes to the file descriptor, not sys.stderr
  assert "could not determine TPU" not in out.err and "Source Location Trace" not in out.err
  r = json.loads(out.out.strip().splitlines()[-1])
  assert (r["hosts"], r["batch_per_chip"], r["chip"]) == (hosts, 32, "TPU v5e")
  assert r["hbm"]["fits"] and 0 < r["hbm"]["needed"] < r["hbm"]["chip"]
  assert abs(r["flops"]["ratio"] - 1) <= target.FLOPS_TOLERANCE, r["flops"]
  # The gradient all-reduce moves the parameters once; BN statistics and the metrics add little.
  reduced = r["collectives"]["all-reduce"]["bytes"]
  assert r["param_bytes"] <= reduced <= 1.1 * r["param_bytes"], (reduced, r["param_bytes"])
  # The roofline, recomputed from the report's figures and the chip's published peaks, and sane for
  # 32 images a chip: no faster than every parameter read once from HBM, and under 10 ms (0.57 ms
  # here, HBM-bound, for ~2.2 GFLOP: 0.011 ms of v5e compute).
  chip, est = chips.find(topology).chip, r["estimate"]
  assert est["compute_ms"] == pytest.approx(1e3 * r["flops"]["xla_per_step"] / chip.peak_flops)
  assert est["hbm_ms"] >= 1e3 * r["param_bytes"] / chip.hbm_bandwidth, est
  assert est["step_ms"] == max(est["compute_ms"], est["hbm_ms"], est["interconnect_ms"]) < 10, est
  assert est["images_per_sec_per_chip"] == pytest.approx(32e3 / est["step_ms"])
  # A compile (or a load from the compilation cache) takes more than a millisecond and, for ResNet-8,
  # well under the test's timeout (the train step: ~2 min on 2 busy cores, cold cache).
  assert all(1e-3 < s < 600 for s in r["compile_s"].values()), r["compile_s"]
  assert "ESTIMATE (a roofline from published peaks, not a measurement)" in out.err
