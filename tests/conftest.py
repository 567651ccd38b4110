"""Test setup: simulate 8 CPU devices and make `configs/` importable from the repo root.

XLA_FLAGS must be set before jax is imported anywhere, which is why it lives here.
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


# --- Real and generated datasets, prepared once per pytest run (tests/test_input_pipeline.py,
# tests/test_prepare.py). ---

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# The complete CIFAR-10 (official binary files, gzipped), kept beside the repository, never in it.
CIFAR10_SOURCE = os.path.join(REPO_ROOT, "..", "shared", "data", "cifar10")


@pytest.fixture(scope="session")
def cifar10_source():
  """The folder of the real CIFAR-10 binary files; tests that need it skip where it is absent."""
  if not os.path.isfile(os.path.join(CIFAR10_SOURCE, "test_batch.bin.gz")):
    pytest.skip(f"real CIFAR-10 not found at {os.path.normpath(CIFAR10_SOURCE)}")
  return CIFAR10_SOURCE


@pytest.fixture(scope="session")
def cifar10_data_dir(tmp_path_factory, cifar10_source):
  """A TFDS data_dir holding cifar10 built offline from the real CIFAR-10 files (~20-40 s, once)."""
  from resnet_jax.data import prepare  # pylint: disable=g-import-not-at-top

  data_dir = str(tmp_path_factory.mktemp("tfds_cifar10"))
  prepare.prepare("cifar10", cifar10_source, data_dir)
  return data_dir


@pytest.fixture(scope="session")
def imagenet_data_dir(tmp_path_factory):
  """(manual_dir, data_dir): a tiny ILSVRC2012 layout of JPEGs and imagenet2012 prepared from it."""
  from resnet_jax.bench import fake_imagenet  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import prepare  # pylint: disable=g-import-not-at-top

  manual = str(tmp_path_factory.mktemp("ilsvrc2012_manual"))
  fake_imagenet.write_fake_imagenet(manual, ("n01440764", "n01443537", "n01484850"), per_class=4, num_val=5)
  data_dir = str(tmp_path_factory.mktemp("tfds_imagenet"))
  prepare.prepare("imagenet2012", manual, data_dir)
  return manual, data_dir
