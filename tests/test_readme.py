"""README's "Using the models in your own code": every Python block runs, in order, in one namespace.

The pretrained-weights block downloads torchvision's DEFAULT resnet18 weights; here the URL table
points at a local file server holding a torchvision resnet18 with random weights, saved under
torchvision's naming rule (<arch>-<sha256 prefix>.pth), so the download, checksum, cache and
conversion all run as they do online.
"""

import os
import re

import pytest

from resnet_jax.pretrained import hub
from tests.test_pretrained import publish, server  # pylint: disable=unused-import  # a fixture

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
SECTION = "## Using the models in your own code"


def _blocks() -> list[tuple[str, str]]:
  """(the bold lead-in before it, code) for each ```python block of the section."""
  with open(README) as f:
    text = f.read()
  start = text.index(SECTION)
  section = text[start:text.index("\n## ", start + len(SECTION))]
  out = []
  for m in re.finditer(r"```python\n(.*?)```", section, re.S):
    leads = re.findall(r"^\*\*([^*\n]+)\*\*", section[:m.start()], re.M)
    out.append((leads[-1] if leads else "", m.group(1)))
  return out


def test_the_section_shows_every_use():
  leads = [lead for lead, _ in _blocks()]
  assert leads == ["A classifier.", "Pretrained weights.", "Features.",
                   "Fine-tuning: a new head, frozen BN.", "NNX.", "bfloat16."]


def test_every_python_block_runs(server, tmp_path, monkeypatch):  # pylint: disable=redefined-outer-name
  root, base, hits = server
  name, _ = publish(root, "resnet18")
  monkeypatch.setitem(hub.TORCHVISION_WEIGHTS, "resnet18", {"IMAGENET1K_V1": f"{base}/{name}"})
  monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
  monkeypatch.chdir(tmp_path)  # the blocks write files where they run
  namespace = {}
  for lead, code in _blocks():
    try:
      exec(compile(code, f"README.md ({lead})", "exec"), namespace)  # pylint: disable=exec-used
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f"README block {lead!r} failed: {e!r}")
  assert hits == [f"/{name}"]  # the weights came through the download path
  assert (tmp_path / "resnet18.npz").is_file()
  assert float(namespace["loss"]) > 0
