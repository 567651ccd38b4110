"""Compiling for targets we do not have: TPU slices through libtpu and GPU machines through the CUDA
plugin (the e2e tier: each compile takes up to a minute on 2 cores), the roofline and HLO reading on
hand-made numbers and on a CPU compile, the GPU table, the report and its exit codes."""

import importlib.util
import json
import os
import subprocess
import sys
import types

import pytest

from resnet_jax import cli
from resnet_jax.cli import compile_report
from resnet_jax.config import default_config
from resnet_jax.run import extras, process
from resnet_jax.run.errors import ConfigError
from resnet_jax.targets import analysis, chips, gpu
from resnet_jax.targets import compile as target
from resnet_jax.targets import devices as target_devices
from resnet_jax.targets import max_batch

HAS_CUDA_PLUGIN = importlib.util.find_spec("jax_cuda12_plugin") is not None
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(**overrides):
  c = default_config()
  c.update(model="resnet8", dataset="cifar10", total_steps=10, lr_decay_steps=(),
           eval_every_steps=0, checkpoint_every_steps=0, log_every_steps=1)
  c.update(overrides)
  return c


def test_the_compiled_step_sees_the_images_a_run_would():
  """A run of ImageNet at image_size=64 crops 64x64 images; the compile builds for the same shape
  (it used the model's default side, 224, whatever image_size said)."""
  import jax  # pylint: disable=g-import-not-at-top

  config = _tiny(dataset="imagenet2012", model="resnet18", image_size=64, batch_size=8, num_devices=1)
  assert target.build(config, jax.devices()[:1]).image_shape == (64, 64, 3)


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
  with pytest.raises(ConfigError, match=r"unknown TPU topology or GPU machine 'v9-8'; known: v3-8 "
                                       r"\(v3:2x2\).*; GPU machines: h100-1 \(a3-highgpu-1g\)"):
    target_devices.find_target("v9-8")


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
  monkeypatch.setattr(target_devices, "devices_of", lambda slice_: [types.SimpleNamespace(process_index=0)] * 8)
  monkeypatch.setattr(target, "build", lambda config, devices: None)
  monkeypatch.setattr(target, "compile_step",
                      lambda trainer, say: (_ for _ in ()).throw(RuntimeError(message)))
  r = target.compile_for(_tiny(batch_size=4096), "v5e-8")
  assert (r["hbm"]["fits"], r["batch_per_chip"], r["chips"]) == (False, 512, 8)
  assert r["hbm"]["needed"] == pytest.approx(16.46 * 2**30)
  text = compile_report.describe_compile(r)
  assert "does NOT fit, 16.46 GiB needed of 16 GiB" in text and "RESOURCE_EXHAUSTED" in text
  monkeypatch.setattr(target, "compile_step",
                      lambda trainer, say: (_ for _ in ()).throw(RuntimeError("other")))
  with pytest.raises(RuntimeError, match="other"):  # any other failure is not an answer
    target.compile_for(_tiny(batch_size=4096), "v5e-8")


def test_max_batch_doubles_then_bisects_in_multiples_of_8(monkeypatch):
  monkeypatch.setattr(target_devices, "devices_of", lambda slice_: [None] * 4)
  asked = []

  def fake_compile(config, topology, per_chip, say):
    asked.append(per_chip)
    return {"hbm": {"fits": per_chip <= 300, "needed": per_chip, "chip": 300, "usable": 300}}
  monkeypatch.setattr(target, "compile_for", fake_compile)
  batch, report = max_batch.max_batch(_tiny(batch_size=512), "v5e-4", say=lambda _: None)
  assert batch == 296 and report["hbm"]["fits"]  # the largest multiple of 8 that fits
  assert asked[:3] == [128, 256, 512]  # from the config's 128 per chip, doubling
  assert len(asked) <= 8
  batch, _ = max_batch.max_batch(_tiny(batch_size=8192), "v5e-4", say=lambda _: None)
  assert batch == 296  # from 2048 per chip, halving first
  # BN statistics over groups of 32 of the global batch: on one chip, batches of 32s only.
  monkeypatch.setattr(target_devices, "devices_of", lambda slice_: [None])
  asked.clear()
  batch, _ = max_batch.max_batch(_tiny(batch_size=256, bn_group_size=32), "v5e-1", say=lambda _: None)
  assert batch == 288 and all(b % 32 == 0 for b in asked), asked


def test_bad_input_is_exit_2_with_the_fix(capsys, monkeypatch):
  args = ["compile", "--topology", "v9-8", "--config", "configs/cifar10.py:resnet20"]
  assert cli.main(args) == 2
  assert "known: v3-8 (v3:2x2), v4-8 (v4:2x2x1)" in capsys.readouterr().err
  assert cli.main(["compile", "--topology", "v5e-8", "--config", "configs/cifar10.py:resnet20",
                   "--config.parallelism=pmap"]) == 2
  assert "compiles the jit strategy" in capsys.readouterr().err
  real = target_devices.importlib.util.find_spec
  monkeypatch.setattr(target_devices.importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real(name, *a))
  with pytest.raises(Exception, match=r"pip install 'resnet-jax\[tpu\]'"):
    target_devices.devices_of(chips.find("v5e-8"))


def test_gpu_machines_by_name_and_by_machine_type():
  t = gpu.find("h100-8")
  assert (t.topology, t.machine.name, t.hosts, t.gpu.name) == (
      "1x1x8", "a3-highgpu-8g", 1, "NVIDIA H100 80GB HBM3")
  assert gpu.find("A3-HIGHGPU-8G") == t and gpu.find("a3-ultragpu-8g").name == "h200-8"
  assert gpu.find("a2-ultragpu-8g").gpu.memory_bytes == 80 * 10**9
  assert gpu.find("a2-highgpu-4g").name == "a100-40gb-4" and gpu.find("a100-8").name == "a100-40gb-8"
  assert gpu.find("g2-standard-96").name == "l4-8" and gpu.find("l4-1").machine.vcpus == 8
  multi = gpu.find("h100-16")
  assert (multi.topology, multi.hosts, multi.cloud_name) == ("1x2x8", 2, "2 x a3-highgpu-8g")
  assert gpu.find("h100-3") is None and chips.find("h100-8") is None  # no TPU is named like a GPU
  # Within a host the all-reduce runs over NVLink (half its two-way 900 GB/s); across hosts over
  # each GPU's share of the VM's 1,000 Gbps.
  assert t.chip.allreduce_bandwidth == 450e9 and multi.chip.allreduce_bandwidth == 1000e9 / 8 / 8
  assert t.chip.vcpus_per_chip == 208 / 8
  # The header `compile` says first, before minutes of compiling.
  assert compile_report.describe_where(multi) == "16 x NVIDIA H100 80GB HBM3 on 2 hosts"
  assert compile_report.describe_where(chips.find("v3-8")) == "4 x TPU v3"  # 2 devices per chip


def test_every_gpu_field_is_published_and_cited():
  for key, g in gpu.GPUS.items():
    assert g.capability in gpu.CAPABILITIES, key
    assert g.source.startswith(f"nvidia.com/en-us/data-center/{key.split('-')[0]}"), g.source
    assert g.peak_tf32 == pytest.approx(g.peak_bf16 / 2, rel=0.01)  # TF32: half the bf16 rate
  # CUDA cores, as the datasheets and whitepapers count them: SMs x FP32 cores per SM.
  assert {k: g.sms * g.fp32_cores_per_sm for k, g in gpu.GPUS.items()} == {
      "h100": 16896, "h200": 16896, "a100-40gb": 6912, "a100-80gb": 6912, "l4": 7424}
  h100 = gpu.find("h100-1").chip
  assert (h100.peak("bfloat16"), h100.peak("float32")) == (989e12, 494.5e12)
  assert chips.CHIPS["v5e"].peak("float32") == chips.CHIPS["v5e"].peak_flops  # one MXU pass on TPU


def test_the_target_config_describes_the_gpu_and_the_libraries():
  text = gpu.target_config(gpu.GPUS["h100"], (9, 28, 0), (12, 9, 0))
  for line in ("core_count: 132", "fpus_per_core: 128", "shared_memory_per_core: 233472",
               "shared_memory_per_block_optin: 232448", "memory_bandwidth: 3350000000000",
               "l2_cache_size: 52428800", "device_memory_size: 80000000000",
               "cuda_compute_capability { major: 9 minor: 0 }", 'platform_name: "CUDA"',
               "dnn_version_info { major: 9 minor: 28 patch: 0 }",
               "runtime_version { major: 12 minor: 9 patch: 0 }",
               'device_description_str: "NVIDIA H100 80GB HBM3"'):
    assert line in text, line
  l4 = gpu.target_config(gpu.GPUS["l4"], (9, 1, 0), (12, 4, 0))
  assert "threads_per_core_limit: 1536" in l4 and "major: 8 minor: 9" in l4


def test_the_command_sets_the_switches_a_cpu_host_needs_and_keeps_the_users_flags():
  assert gpu.environment({}) == {"JAX_PLATFORMS": "cpu", "JAX_SKIP_CUDA_CONSTRAINTS_CHECK": "1",
                                 "XLA_FLAGS": "--xla_gpu_autotune_level=0"}
  assert gpu.environment({"XLA_FLAGS": "--xla_dump_to=/d"})["XLA_FLAGS"] == (
      "--xla_dump_to=/d --xla_gpu_autotune_level=0")
  kept = "--xla_gpu_autotune_level=2"
  assert gpu.environment({"XLA_FLAGS": kept})["XLA_FLAGS"] == kept


def test_a_gpus_usable_memory_is_jaxs_share_of_it():
  h100, v5e = gpu.find("h100-8"), chips.find("v5e-8")
  assert target.usable_memory(h100, {}) == 60 * 10**9  # 75% of 80 GB
  assert target.usable_memory(h100, {"XLA_PYTHON_CLIENT_MEM_FRACTION": ".9"}) == 72 * 10**9
  assert target.usable_memory(v5e, {"XLA_PYTHON_CLIENT_MEM_FRACTION": ".5"}) == 16 * 2**30


def test_kernel_bytes_count_what_xla_counts_and_program_flops_the_convolutions():
  # On CPU the compiler's own cost analysis exists: the HLO reading must agree with it (it stands in
  # for it on CUDA, where there is none), and so must the FLOPs of the unoptimised program.
  import jax  # pylint: disable=g-import-not-at-top

  trainer = target.build(_tiny(batch_size=16, eval_batch_size=16, cpu_fusion=""), jax.devices()[:1])
  compiled = target.compile_step(trainer)
  xla = compiled["train"].cost_analysis()
  assert analysis.kernel_bytes(compiled["train"].as_text()) == pytest.approx(xla["bytes accessed"],
                                                                            rel=0.01)
  assert analysis.program_flops(compiled["train_lowered"]) == pytest.approx(xla["flops"], rel=0.05)
  assert analysis.kernel_bytes("""
ENTRY %main (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  %w = (s32[], f32[4]{0}) while(%t), condition=%cond, body=%body
  ROOT %f = f32[4]{0} fusion(%p, %p), kind=kLoop, calls=%fused
}""") == 3 * 16  # the fusion reads two operands and writes one; the while's missing body adds 0


def test_small_images_explain_the_flops_ratio_and_tiny_times_keep_their_digits():
  note = target._flops_note(_tiny(), (8, 8, 1), xla=0.71, counted=1.0)
  assert "8x8 images" in note and "padding" in note and "not identified" not in note
  assert "not identified" in target._flops_note(_tiny(), (224, 224, 3), xla=0.5, counted=1.0)
  assert [compile_report._ms(x) for x in (60.657, 0.042, 0.0044)] == ["60.66 ms", "0.042 ms", "4.4 us"]


def test_a_gpu_machine_compiles_and_reports_with_exit_0_fits_and_1_does_not(capsys, monkeypatch):
  # The CPU's devices stand in for the GPU's here (the plugin's devices are the e2e tier's): what is
  # tested is the command around them: the header first, each phase named, the GPU's figures, the
  # share of its memory JAX takes, and the exit codes.
  import jax  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(target_devices, "devices_of", lambda t: jax.devices()[:8])
  monkeypatch.setattr(extras, "missing", lambda modules: [])  # the plugin is not needed here
  for name in ("XLA_FLAGS", "JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "XLA_PYTHON_CLIENT_MEM_FRACTION"):
    monkeypatch.setenv(name, os.environ.get(name, ""))  # the command sets them; they go with the test
  args = ["compile", "--topology", "a3-highgpu-8g", "--config", "configs/cifar10.py:resnet8",
          "--config.batch_size=64", "--config.eval_batch_size=64", "--config.cpu_fusion="]
  assert cli.main(args) == 0
  out = capsys.readouterr()
  r = json.loads(out.out.strip().splitlines()[-1])
  assert (r["platform"], r["machine"], r["cuda_topology"], r["chips"], r["batch_per_chip"]) == (
      "cuda", "a3-highgpu-8g", "1x1x8", 8, 8)
  assert r["hbm"]["usable"] == 60 * 10**9 and r["hbm"]["fits"]
  assert r["estimate"]["peak_flops"] == 494.5e12  # float32: TF32 on an H100
  lines = [l.split(" (")[0] for l in out.err.splitlines()]
  assert lines[:7] == ["resnet-jax: compiling resnet8", "resnet-jax: describing h100-8's devices",
                       "resnet-jax: building the trainer", "resnet-jax: lowering the train step",
                       "resnet-jax: compiling the train step", "resnet-jax: compiling the eval step",
                       "resnet-jax: analysing the compiled programs"], out.err
  assert "memory per GPU" in out.err and "75% of the datasheet's 80 GB" in out.err
  assert "not known without a GPU" in out.err and "0.00 ms" not in out.err
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "1e-9")  # a share nothing fits in
  assert cli.main(args) == 1
  assert "does NOT fit" in capsys.readouterr().err


def test_no_cuda_plugin_is_exit_2_naming_the_gpu_extra(capsys, monkeypatch):
  monkeypatch.setattr(extras, "missing", lambda modules: [m for m in modules
                                                          if m == "jax_cuda12_plugin"])
  assert cli.main(["compile", "--topology", "h100-8", "--config", "configs/cifar10.py:resnet8"]) == 2
  assert "pip install 'resnet-jax[gpu]'" in capsys.readouterr().err
  real = target_devices.importlib.util.find_spec
  monkeypatch.setattr(target_devices.importlib.util, "find_spec",
                      lambda name, *a: None if name == "jax_cuda12_plugin" else real(name, *a))
  with pytest.raises(Exception, match=r"pip install 'resnet-jax\[gpu\]'"):
    target_devices.devices_of(gpu.find("h100-8"))


def test_a_step_lowered_for_cuda_has_no_cpu_only_piece_and_a_real_loop():
  # What the CUDA plugin would compile, lowered without it (jax.export): nothing of XLA:CPU's may
  # leak into it, and K steps per dispatch stay a loop (unrolled only on CPU, parallel.scan).
  import re  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  from jax import export  # pylint: disable=g-import-not-at-top
  from resnet_jax import data, models  # pylint: disable=g-import-not-at-top
  from resnet_jax.training.trainer import Trainer  # pylint: disable=g-import-not-at-top

  config = _tiny(batch_size=32, steps_per_dispatch=2, log_every_steps=2, data_on_device=True,
                 augment="cifar", num_devices=1)
  trainer = Trainer(config, data=data.spec(config, models.default_image_size(config.model)),
                    devices=jax.devices("cpu")[:1], platform="cuda")
  assert not trainer.strategy.compiler_options  # cpu_fusion stays on the CPU
  state = trainer.abstract_state()
  fn, args = trainer.dispatch_call(0, 2, abstract=True)
  train = export.export(fn, platforms=("cuda",))(state, *args).mlir_module()
  evaluate = export.export(trainer.strategy.eval_step, platforms=("cuda",))(
      state, trainer.abstract_eval_batch()).mlir_module()
  for text in (train, evaluate):
    calls = set(re.findall(r"stablehlo\.custom_call @([\w.]+)", text))
    assert not [c for c in calls if re.search(r"lapack|ducc|ynn|onednn|__cpu|xla_cpu", c, re.I)], calls
  assert "stablehlo.while" in train


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


@pytest.mark.e2e
@pytest.mark.timeout(600)
@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="needs the `gpu` extra (the CUDA plugin)")
@pytest.mark.parametrize("machine", ["h100-1", "h100-8"])
def test_resnet8_compiles_for_one_and_eight_gpus(machine, tmp_path):
  # In a subprocess: the command sets JAX_PLATFORMS and the plugin's switches before JAX starts.
  n = gpu.find(machine).machine.gpus
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  proc = subprocess.run(
      [sys.executable, "-m", "resnet_jax.cli", "compile", "--topology", machine, "--config",
       "configs/cifar10.py:resnet8", f"--config.batch_size={32 * n}",
       f"--config.eval_batch_size={64 * n}", "--config.steps_per_dispatch=2",
       "--config.log_every_steps=2"], capture_output=True, text=True, env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]  # fits
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (r["platform"], r["chips"], r["batch_per_chip"], r["chip"]) == (
      "cuda", n, 32, "NVIDIA H100 80GB HBM3")
  # Memory: at least the state and the batch the step takes (the analytic lower bound: parameters,
  # momentum, BN statistics, 2 batches of 32 CIFAR images), and within 64 MiB of activations of it.
  train = r["hbm"]["train"]
  assert train["arguments"] >= 2 * r["param_bytes"] + 2 * 32 * 32 * 32 * 3
  assert train["arguments"] <= r["hbm"]["needed"] <= train["arguments"] + 64 * 2**20, r["hbm"]
  assert abs(r["flops"]["ratio"] - 1) <= target.FLOPS_TOLERANCE, r["flops"]
  if n > 1:  # the gradient all-reduce moves the parameters once
    reduced = r["collectives"]["all-reduce"]["bytes"]
    assert r["param_bytes"] <= reduced <= 1.1 * r["param_bytes"], (reduced, r["param_bytes"])
  else:
    assert r["collectives"] == {}
  assert r["estimate"]["hbm_ms"] > 0 and "not known without a GPU" in proc.stderr
