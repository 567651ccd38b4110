"""Every Python block of README.md and of every guide (docs/index.md, docs/guides/*.md) runs: a page's
blocks in order, in one namespace per page, as a reader pastes them.

The models guide's pretrained-weights block downloads torchvision's DEFAULT resnet18 weights; here
the URL table points at a local file server holding a torchvision resnet18 with random weights,
saved under torchvision's naming rule (<arch>-<sha256 prefix>.pth), so the download, checksum, cache
and conversion all run as they do online.
"""

import glob
import os
import re

import pytest

from resnet_jax.pretrained import hub
from tests.test_pretrained import publish, server  # pylint: disable=unused-import  # a fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
MODELS_GUIDE = os.path.join(ROOT, "docs", "guides", "models.md")
PAGES = [README, os.path.join(ROOT, "docs", "index.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "guides", "*.md")))
SECTION = "## Using the models in your own code"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(path: str, section: str | None = None) -> list[tuple[str, str]]:
  """(the bold lead-in before it, code) for each ```python block of a page (or of one section)."""
  text = open(path, encoding="utf-8").read()
  if section:
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    text = text[start:] if end < 0 else text[start:end]
  out = []
  for m in BLOCK.finditer(text):
    leads = re.findall(r"^\*\*([^*\n]+)\*\*", text[:m.start()], re.M)
    out.append((leads[-1] if leads else "", m.group(1)))
  return out


def test_the_models_guide_shows_every_use():
  leads = [lead for lead, _ in _blocks(MODELS_GUIDE, SECTION)]
  assert leads == ["A classifier.", "Pretrained weights.", "Features.",
                   "Fine-tuning: a new head, frozen BN.", "NNX.", "bfloat16."]


def test_readme_and_the_models_guide_have_python_blocks():
  """The pages this file runs: README's model example and the guide's, so a move cannot empty them."""
  assert len(_blocks(README)) >= 1 and len(_blocks(MODELS_GUIDE)) >= 7


def _run_page(path, namespace):
  name = os.path.relpath(path, ROOT)
  for lead, code in _blocks(path):
    try:
      exec(compile(code, f"{name} ({lead or 'block'})", "exec"), namespace)  # pylint: disable=exec-used
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f"{name}: block {lead!r} failed: {e!r}")


@pytest.mark.parametrize("path", [p for p in PAGES if p != MODELS_GUIDE],
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_every_python_block_of_the_page_runs(path, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # blocks write files where they run
  _run_page(path, {})


def test_every_python_block_of_the_models_guide_runs(server, tmp_path, monkeypatch):  # pylint: disable=redefined-outer-name
  root, base, hits = server
  name, _ = publish(root, "resnet18")
  monkeypatch.setitem(hub.TORCHVISION_WEIGHTS, "resnet18", {"IMAGENET1K_V1": f"{base}/{name}"})
  monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
  monkeypatch.chdir(tmp_path)  # the blocks write files where they run
  namespace = {}
  _run_page(MODELS_GUIDE, namespace)
  assert hits == [f"/{name}"]  # the weights came through the download path
  assert (tmp_path / "resnet18.npz").is_file()
  assert float(namespace["loss"]) > 0
