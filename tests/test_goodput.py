"""Utilisation and goodput (`training.goodput`): the ledger's arithmetic on a fake clock, the peak
figures each device kind gets, and XLA's FLOPs of a compiled step; profiles (`training.profiling`)."""

import glob
import math
import os
import types

import jax
import jax.numpy as jnp
import pytest

from resnet_jax.run.errors import ConfigError
from resnet_jax.targets import chips, gpu
from resnet_jax.training import goodput, loop, validation
from tests.helpers import small_config


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_ledger_rates_an_interval_without_its_compile_evaluation_and_checkpoint():
  clock = FakeClock()
  ledger = goodput.Ledger(clock=clock, flops_per_step=2e12, peak=10e12)
  clock.now += 3.0                      # restart: loading the data, restoring
  with ledger.timing("compile"):
    clock.now += 5.0                    # the first dispatch, one step, compiles
  ledger.uncounted_steps = 1
  for _ in range(4):                    # 4 steps of 1 s, 0.25 s of each waiting for its batch
    with ledger.timing("input"):
      clock.now += 0.25
    clock.now += 0.75
  perf = ledger.rate(seconds=9.0, steps=5)  # the interval began before the compile
  assert perf["perf/step_s"] == pytest.approx(1.0)
  assert perf["perf/input_wait_share"] == pytest.approx(0.25)
  assert perf["perf/tflops_per_device"] == pytest.approx(2.0)
  assert perf["perf/peak_share"] == pytest.approx(0.2)
  with ledger.timing("evaluate"):
    clock.now += 1.0
  with ledger.timing("checkpoint"):
    clock.now += 0.5
  clock.now += 2.0                      # two more steps
  perf = ledger.rate(seconds=3.5, steps=2)  # this interval holds the evaluation and the save
  assert perf["perf/step_s"] == pytest.approx(1.0) and perf["perf/input_wait_share"] == 0.0
  summary = ledger.summary()
  assert summary["wall_s"] == pytest.approx(15.5)
  assert summary["restart_s"] == pytest.approx(3.0) and summary["compile_s"] == pytest.approx(5.0)
  assert summary["training_s"] == pytest.approx(3.0 + 2.0) and summary["input_s"] == pytest.approx(1.0)
  assert summary["evaluate_s"] == pytest.approx(1.0) and summary["checkpoint_s"] == pytest.approx(0.5)
  assert summary["other_s"] == pytest.approx(0.0)
  assert summary["goodput"] == pytest.approx(5.0 / 15.5)
  assert "goodput 32.3%" in goodput.describe(summary)


def test_ledger_without_flops_or_peak_reports_only_what_it_knows():
  clock = FakeClock()
  ledger = goodput.Ledger(clock=clock)
  clock.now += 2.0
  perf = ledger.rate(seconds=2.0, steps=2)
  assert perf == {"perf/step_s": 1.0, "perf/input_wait_share": 0.0}
  assert goodput.Ledger(clock=clock, flops_per_step=1e9).rate(1.0, 1).keys() >= {
      "perf/tflops_per_device"}
  assert goodput.Ledger(clock=clock).rate(seconds=1.0, steps=0) == {}


@pytest.mark.parametrize("platform,kind,dtype,expected", [
    ("tpu", "TPU v4", "bfloat16", chips.CHIPS["v4"].peak_flops),
    ("tpu", "TPU v5 lite", "float32", chips.CHIPS["v5e"].peak_flops),
    ("tpu", "TPU v6 lite", "bfloat16", chips.CHIPS["v6e"].peak_flops),
    ("tpu", "TPU v5p", "bfloat16", chips.CHIPS["v5p"].peak_flops),
    ("tpu", "TPU v3", "bfloat16", chips.CHIPS["v3"].peak_flops / 2),  # one device per core
    ("gpu", "NVIDIA H100 80GB HBM3", "float32", gpu.GPUS["h100"].peak_tf32),
    ("gpu", "NVIDIA H200", "bfloat16", gpu.GPUS["h200"].peak_bf16),
    ("gpu", "NVIDIA A100-SXM4-40GB", "bfloat16", gpu.GPUS["a100-40gb"].peak_bf16),
    ("gpu", "NVIDIA A100-SXM4-80GB", "float32", gpu.GPUS["a100-80gb"].peak_tf32),
    ("gpu", "NVIDIA L4", "bfloat16", gpu.GPUS["l4"].peak_bf16),
])
def test_peak_of_each_accelerator_kind_is_its_published_figure(platform, kind, dtype, expected):
  device = types.SimpleNamespace(platform=platform, device_kind=kind)
  peak, source = goodput.peak_flops(device, dtype)
  assert peak == expected and "published" in source


def test_unknown_kind_has_no_peak_and_cpu_peak_is_measured_once():
  assert math.isnan(goodput.peak_flops(types.SimpleNamespace(platform="gpu", device_kind="X1"),
                                       "float32")[0])
  peak, source = goodput.peak_flops(jax.devices("cpu")[0], "float32")
  # A host's share per simulated device: the measured matmul over the local CPU devices.
  assert peak == pytest.approx(goodput.cpu_matmul_peak("float32") / jax.local_device_count("cpu"))
  assert 1e8 < goodput.cpu_matmul_peak("float32") < 1e14 and "measured" in source
  assert goodput.cpu_matmul_peak.cache_info().misses == 1  # measured once per process, then cached


def test_step_flops_are_xlas_per_step():
  fn = jax.jit(lambda w, x: (w + 0.0 * jnp.sum(x @ w), {"loss": jnp.sum(w)}))
  w, x = jnp.ones((64, 64)), jnp.ones((32, 64))
  state, _ = fn(w, x)
  flops = goodput.step_flops(fn, state, (x,), steps=2)
  assert flops == pytest.approx(2 * 32 * 64 * 64 / 2, rel=0.1)


def test_a_step_whose_flops_cannot_be_read_is_rated_nan_and_the_run_goes_on():
  class Unlowerable:  # as pmap over several processes: re-lowering from shapes fails inside JAX
    def lower(self, *args):
      raise IndexError("list index out of range")

  with pytest.warns(UserWarning, match="FLOPs could not be read .IndexError"):
    assert math.isnan(goodput.step_flops(Unlowerable(), jnp.ones(3), (), steps=1))


@pytest.mark.parametrize("spec", ["3", "3-5", "a:b", "5:3", "0:2", "2:7", ":4"])
def test_profile_steps_other_than_a_to_b_within_the_run_are_refused(spec):
  with pytest.raises(ConfigError, match="profile_steps=.*A:B"):
    validation.validate(small_config(profile_steps=spec))  # 6 steps


def test_profile_steps_write_a_trace_of_those_steps(tmp_path):
  loop.train_and_evaluate(small_config(total_steps=4, profile_steps="2:3"), str(tmp_path))
  traces = glob.glob(os.path.join(tmp_path, "profile", "plugins", "profile", "*", "*"))
  # TensorBoard's profile plugin reads the .xplane.pb; Perfetto the .trace.json.gz.
  assert any(t.endswith(".xplane.pb") for t in traces), traces
  assert any(t.endswith(".trace.json.gz") for t in traces), traces
