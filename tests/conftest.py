"""Test setup: simulate 8 CPU devices, put the checkout first on the path, find the real CIFAR-10.

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

# The complete CIFAR-10 (the official binary files, plain or gzipped, or cifar-10-binary.tar.gz),
# never inside the repository: $RESNET_JAX_CIFAR10 names its folder, else ../shared/data/cifar10
# beside the checkout is used.
CIFAR10_ENV = "RESNET_JAX_CIFAR10"
CIFAR10_SOURCE = os.environ.get(CIFAR10_ENV) or os.path.join(REPO_ROOT, "..", "shared", "data",
                                                              "cifar10")


def has_cifar10(folder: str) -> bool:
  return any(os.path.isfile(os.path.join(folder, name))
             for name in ("test_batch.bin.gz", "test_batch.bin", "cifar-10-binary.tar.gz"))


@pytest.fixture(scope="session")
def cifar10_source():
  """The folder of the real CIFAR-10 binary files; tests that need it skip where it is absent."""
  if not has_cifar10(CIFAR10_SOURCE):
    pytest.skip(f"real CIFAR-10 not found at {os.path.normpath(CIFAR10_SOURCE)}; set "
                f"{CIFAR10_ENV} to the folder of its binary files (README, Tests)")
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
