"""Performance options keep the numerics: K steps per dispatch, on-device data, remat memory, gpu.sh."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from resnet_jax import bench
from resnet_jax.run import process as runtime
from resnet_jax.data import on_device
from resnet_jax.run.errors import ConfigError
from resnet_jax.training import loop, xla_cpu
from resnet_jax.training.cadence import Cadence
from tests.helpers import max_abs_diff, reference_batch, small_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params_after(config, steps):
  trainer = loop.Trainer(config)
  cadence = Cadence.from_config(config)
  state = trainer.strategy.put_state(trainer.init_state())
  done, losses = 0, []
  while done < steps:
    k = cadence.dispatch_size(done, config.total_steps)
    state, metrics = trainer.dispatch(state, done, k)
    losses += list(np.ravel(trainer.strategy.fetch(metrics)["train/loss"]))
    done += k
  return jax.device_get(trainer.strategy.member_state(state).params), losses


@pytest.mark.parametrize("parallelism", ["jit", "pmap"])
def test_k_steps_per_dispatch_equal_k_single_steps(parallelism):
  common = dict(total_steps=6, log_every_steps=3, checkpoint_every_steps=3, num_devices=2,
                parallelism=parallelism)
  single, single_losses = _params_after(small_config(**common), 3)
  multi, multi_losses = _params_after(small_config(steps_per_dispatch=3, **common), 3)
  assert max_abs_diff(single, multi) <= 1e-6
  np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-6)
  with pytest.raises(ConfigError, match="multiple of steps_per_dispatch=4"):
    loop.Trainer(small_config(steps_per_dispatch=4, log_every_steps=6))


def test_cpu_fusion_keeps_the_numerics_and_reaches_the_compiled_step():
  common = dict(total_steps=6, num_devices=2)
  plain, plain_losses = _params_after(small_config(cpu_fusion="", **common), 3)
  fused, fused_losses = _params_after(small_config(cpu_fusion="eltwise,reduce", **common), 3)
  assert max_abs_diff(plain, fused) <= 1e-5
  np.testing.assert_allclose(fused_losses, plain_losses, rtol=1e-5)

  # The option reaches XLA: the compiled step has more YNNPACK fusions and fewer transposes.
  def hlo(cpu_fusion):
    trainer = loop.Trainer(small_config(cpu_fusion=cpu_fusion, **common))
    state = trainer.strategy.put_state(trainer.init_state())
    fn, args = trainer.dispatch_call(0, 1)
    return fn.lower(state, *args).compile().as_text()
  with_fusion, without = hlo("eltwise"), hlo("")
  assert with_fusion.count("__ynn_fusion") > without.count("__ynn_fusion")
  assert with_fusion.count("transpose") < without.count("transpose")
  assert xla_cpu.cpu_compiler_options("", "cpu") == {}
  assert xla_cpu.cpu_compiler_options("eltwise", "cuda") == {}  # CPU-only option
  with pytest.raises(ConfigError, match="unknown fusion \\['winograd'\\].*dot.*eltwise.*reduce.*conv"):
    loop.Trainer(small_config(cpu_fusion="eltwise,winograd"))


def test_cpu_fusion_conv_hands_convolutions_to_ynnpack():
  # "conv" reaches XLA as INDIVIDUAL_CONVOLUTION: the compiled step holds more YNNPACK fusions.
  def ynn_fusions(cpu_fusion):
    trainer = loop.Trainer(small_config(cpu_fusion=cpu_fusion, num_devices=1))
    fn, args = trainer.dispatch_call(0, 1, abstract=True)
    return fn.lower(trainer.abstract_state(), *args).compile().as_text().count("__ynn_fusion")
  assert ynn_fusions("eltwise,reduce,conv") > ynn_fusions("eltwise,reduce")
  assert xla_cpu.cpu_compiler_options("eltwise,conv", "cpu")["xla_cpu_experimental_ynn_fusion_type"] == (
      "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")


def test_on_device_batches_match_their_reference_sampler():
  rng = np.random.default_rng(0)
  images = rng.standard_normal((50, 8, 8, 3)).astype(np.float32)
  labels = np.arange(50, dtype=np.int32)
  sample = jax.jit(on_device.sample_batch, static_argnums=(1, 3, 4))
  seen = []
  for step in (0, 1, 2, 3, 7):  # batches of 16 of 50 examples: steps 3 and 7 span two epochs
    got = sample({"image": images, "label": labels}, 5, step, 16, "cifar")
    ref = reference_batch(images, labels, 5, step, 16, "cifar")
    np.testing.assert_array_equal(np.asarray(got["label"]), ref["label"])
    np.testing.assert_allclose(np.asarray(got["image"]), ref["image"], atol=0)
    seen.append(ref["label"])
  # The first 48 draws cover 48 distinct examples of the first epoch (a global shuffle).
  assert len(set(np.concatenate(seen[:3]))) == 48
  # Augmentation really happens (crops move pixels) and flips occur.
  plain = reference_batch(images, labels, 5, 0, 16, "none")
  assert not np.allclose(plain["image"], seen and reference_batch(
      images, labels, 5, 0, 16, "cifar")["image"])


def test_on_device_data_resumes_exactly(tmp_path):
  config = small_config(data_on_device=True, augment="cifar", checkpoint_every_steps=0)
  loop.train_and_evaluate(config, str(tmp_path / "whole"))
  loop.train_and_evaluate(small_config(data_on_device=True, augment="cifar", total_steps=3,
                                        checkpoint_every_steps=0), str(tmp_path / "parts"))
  loop.train_and_evaluate(config, str(tmp_path / "parts"))
  finals = [jax.device_get(loop.restore(str(tmp_path / name))[1].params) for name in ("whole", "parts")]
  assert max_abs_diff(*finals) == 0.0
  with pytest.raises(ConfigError, match="needs parallelism='jit'"):
    loop.Trainer(small_config(data_on_device=True, parallelism="pmap"))


def test_bench_reports_memory_of_the_compiled_step():
  # (XLA:CPU does not turn remat into a smaller footprint: even a pure-JAX MLP with jax.checkpoint
  # reports more temporary memory there, so the saving is measured on GPU, not asserted here.)
  small = bench.run_benchmark("resnet20", batch_size=8, steps=1, image_size=16, num_devices=1,
                              warmup_steps=0, remat_blocks=True)
  large = bench.run_benchmark("resnet20", batch_size=32, steps=1, image_size=16, num_devices=1,
                              warmup_steps=0, remat_blocks=True)
  assert small["remat_blocks"] and small["flops_per_step"] > 0
  assert 0 < small["memory_temp_mb"] < large["memory_temp_mb"]  # activations grow with the batch
  assert large["memory_peak_mb"] >= large["memory_temp_mb"]


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_gpu_script_smoke_runs_end_to_end():
  proc = subprocess.run(["bash", os.path.join(REPO_ROOT, "benchmarks", "gpu.sh"), "--smoke"],
                        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
                        env={**os.environ, "PYTHON": sys.executable})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "64k steps (min)" in proc.stdout and "failed" not in proc.stdout
  assert proc.stdout.strip().splitlines()[-1].startswith('{"device"')
  # Every row is labelled by what ran (the smoke run's resnet8 at batch 8), not by the full run's plan.
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  bench_part, _, vectorized_part = proc.stdout.partition("vectorised sweep members")
  table = [line for line in bench_part.splitlines() if line.startswith("| resnet")]
  assert len(table) == len(result["results"]) == 4
  for row, r in zip(table, result["results"]):
    assert row.startswith(f"| {r['model']} {r['dtype']} b{r['batch_size']}") and r["model"] == "resnet8"
  assert "resnet50" not in proc.stdout and "resnet56" not in proc.stdout
  # Then the vectorised members against the same members in sequence (benchmarks/vectorized.py).
  (row,) = [line for line in vectorized_part.splitlines() if line.startswith("| resnet8")]
  (v,) = result["vectorized"]["results"]
  assert v["members"] == 2 and v["speedup"] > 0 and row.startswith("| resnet8 | 2 | 8 |")


def test_hugepage_environment_for_the_reexec():
  glibc = ("glibc", "2.36")
  if sys.platform != "linux":
    assert runtime.hugepage_environment({}, glibc) is None
    return
  env = runtime.hugepage_environment({"PATH": "/bin"}, glibc)
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and env["PATH"] == "/bin"
  assert env[runtime.HUGEPAGES_ENV] == "0"  # the re-executed process does not re-exec again
  assert runtime.hugepage_environment(env, glibc) is None
  kept = runtime.hugepage_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, glibc)
  assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert runtime.hugepage_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, glibc) is None
  assert runtime.hugepage_environment({runtime.HUGEPAGES_ENV: "0"}, glibc) is None  # the user's opt-out
  assert runtime.hugepage_environment({}, ("glibc", "2.31")) is None  # no hugetlb tunable before 2.35
  assert runtime.hugepage_environment({}, ("", "")) is None  # musl and others


@pytest.mark.e2e
def test_command_line_reexecs_with_huge_pages():
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", runtime.HUGEPAGES_ENV)}
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
  cmd = [sys.executable, "-m", "resnet_jax.cli", "bench", "--model", "resnet8", "--batch-size", "8",
         "--steps", "1", "--num-devices", "1"]
  out = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
  expected = runtime.hugepage_environment(env)
  tunables = json.loads(out.stdout.strip().splitlines()[-1])["glibc_tunables"]
  assert tunables == ("" if expected is None else expected["GLIBC_TUNABLES"])


def test_no_tpu_probe_where_libtpu_is_installed_but_no_chip_is(tmp_path):
  present = lambda *names: (lambda name: object() if name in names else None)
  no_chip, no_gpu = (str(tmp_path / "accel*"),), (str(tmp_path / "nvidia[0-9]*"),)
  assert runtime.platforms_without_tpu_probe({}, present("libtpu"), no_chip) == "cpu"
  # A CUDA plugin on a host without a GPU (the `gpu` extra, for `resnet-jax compile`): no probe.
  assert runtime.platforms_without_tpu_probe({}, present("libtpu", "jax_cuda12_plugin"), no_chip,
                                             no_gpu) == "cpu"
  assert runtime.platforms_without_tpu_probe({}, present("jax_cuda12_plugin"), no_chip,
                                             no_gpu) == "cpu"
  # A TPU VM (a chip's device file), a GPU, a user's choice, or no plugin: left alone.
  (tmp_path / "nvidia0").touch()
  assert runtime.platforms_without_tpu_probe({}, present("libtpu", "jax_cuda12_plugin"), no_chip,
                                             no_gpu) is None
  (tmp_path / "accel0").touch()
  assert runtime.platforms_without_tpu_probe({}, present("libtpu"), no_chip) is None
  assert runtime.platforms_without_tpu_probe({"JAX_PLATFORMS": "tpu"}, present("libtpu"),
                                             (str(tmp_path / "none*"),)) is None
  assert runtime.platforms_without_tpu_probe({}, present(), (str(tmp_path / "none*"),)) is None


def test_compilation_cache_folder_from_the_key_the_environment_or_the_default(tmp_path):
  home = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
  assert runtime.compilation_cache_dir("", home) == str(tmp_path / "xdg" / "resnet_jax" / "jax")
  assert runtime.compilation_cache_dir("", {**home, "RESNET_JAX_CACHE": "/c"}) == "/c/jax"
  moved = {**home, runtime.COMPILATION_CACHE_ENV: str(tmp_path / "env")}
  assert runtime.compilation_cache_dir("", moved) == str(tmp_path / "env")
  assert runtime.compilation_cache_dir(str(tmp_path / "key"), moved) == str(tmp_path / "key")
  assert runtime.compilation_cache_dir("", {**home, runtime.COMPILATION_CACHE_ENV: "off"}) is None
  assert runtime.compilation_cache_dir("off", moved) is None  # the key wins over the environment


@pytest.mark.e2e
def test_a_second_start_of_a_run_compiles_nothing_new(tmp_path):
  """The command's cache on: a resumed run loads every program the first start compiled."""
  cache = tmp_path / "cache"
  env = {**os.environ, runtime.COMPILATION_CACHE_ENV: str(cache), "RESNET_JAX_HUGEPAGES": "0"}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the test session's own cache stays out of it

  def train(steps):
    cmd = [sys.executable, "-m", "resnet_jax.cli", "train", "--config", "configs/quickstart.py",
           "--workdir", str(tmp_path / "run"), "--config.model=resnet8", f"--config.total_steps={steps}",
           "--config.lr_decay_steps=()", "--config.num_devices=1", "--config.log_every_steps=2",
           "--config.eval_every_steps=2", "--config.checkpoint_every_steps=2"]
    subprocess.run(cmd, env=env, cwd=REPO_ROOT, check=True, capture_output=True)
    return sorted(os.listdir(cache))

  first = train(2)
  assert first  # the steps, evaluation and initialisation were written
  assert train(4) == first  # resumed from step 2: every program came from the cache
