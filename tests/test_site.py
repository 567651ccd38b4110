"""The documentation site builds strictly (a warning is an error) and offline: every guide, every
measurement page and the API reference generated from the public modules' docstrings.

The build runs `mkdocs build --strict` in a subprocess whose sockets refuse to connect (a
sitecustomize on its path), so a theme, plugin or inventory that reached for the network would fail
it here as it would on a machine without one.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFLINE = '''
import socket

def _refuse(*args, **kwargs):
  raise OSError("the documentation build tried to reach the network")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
'''
# What the API reference must show: an object of each public module (a rename that empties a page
# would otherwise still build).
API = {"models": ["resnet_jax.models.get_model", "resnet_jax.models.ResNet"],
       "pretrained": ["resnet_jax.pretrained.load_torchvision", "resnet_jax.pretrained.from_torchvision"],
       "config": ["resnet_jax.config.default_config", "resnet_jax.config.load"],
       "data": ["resnet_jax.data.get_dataset", "resnet_jax.data.batch_plan"],
       "training": ["resnet_jax.training.step.train_step", "resnet_jax.training.optim.create_optimizer",
                    "resnet_jax.training.loop.train_and_evaluate"],
       "experiments": ["resnet_jax.experiments.sweep.run_sweep", "resnet_jax.experiments.report.write_report"],
       "targets": ["resnet_jax.targets.compile.compile_for"]}


def test_the_site_builds_strictly_offline(tmp_path):
  pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') builds the site")
  (tmp_path / "offline").mkdir()
  (tmp_path / "offline" / "sitecustomize.py").write_text(OFFLINE)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "offline"), ROOT]))
  site = tmp_path / "site"
  done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
  assert done.returncode == 0, done.stdout + done.stderr
  for page, objects in API.items():
    html = (site / "api" / page / "index.html").read_text()
    missing = [name for name in objects if f'id="{name}"' not in html]
    assert not missing, f"api/{page}: {missing} not rendered"
  for guide in ("models", "training", "paper", "data", "cloud", "performance", "faults", "commands",
                "development"):
    assert (site / "guides" / guide / "index.html").is_file(), guide
  assert (site / "results" / "cifar10_resnet20" / "index.html").is_file()


def test_the_offline_guard_refuses_a_connection(tmp_path):
  """The guard the build runs under does refuse the network (else the test above proves nothing)."""
  (tmp_path / "sitecustomize.py").write_text(OFFLINE)
  done = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"],
                        env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True, text=True,
                        timeout=60, check=False)
  assert done.returncode != 0 and "tried to reach the network" in done.stderr
