"""Smoke tests for the reference train steps in benchmarks/ (tiny, CPU)."""

import importlib.util
import math
import os

import pytest

BENCH_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _load(name):
  # benchmarks/ is a folder of scripts, not a package: import by path.
  spec = importlib.util.spec_from_file_location(
      f"benchmarks_{name}", os.path.join(BENCH_DIR, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _check(figures):
  for key in ("step_ms_median", "images_per_sec", "compile_s"):
    value = figures[key]
    assert math.isfinite(value) and value > 0, (key, value)


def test_minimal_flax_run():
  _check(_load("minimal_flax").run(depth=8, batch_size=8, steps=2))


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
