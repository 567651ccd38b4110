"""The docs keep their promises: every published result names the command and date that produced it,
and every relative link in README.md and docs/ points at a file that exists."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = sorted(glob.glob(os.path.join(ROOT, "docs", "results", "*", "README.md")))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target)


def test_there_are_results_to_check():
  assert len(RESULTS) >= 4, RESULTS


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_each_result_names_its_command_date_and_machine(path):
  text = open(path, encoding="utf-8").read()
  blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
  assert any(re.search(r"\b(resnet-jax|python|bash|benchmarks/)\S*", b) for b in blocks), (
      f"{path}: no command block")
  assert re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{path}: no date (YYYY-MM-DD)"
  assert re.search(r"\bCPU\b|Xeon|EPYC|GPU", text), f"{path}: no machine"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(path):
  text = open(path, encoding="utf-8").read()
  missing = []
  for target in LINK.findall(text):
    if "://" in target or target.startswith(("#", "mailto:")):
      continue
    file = target.split("#")[0]
    if file and not os.path.exists(os.path.join(os.path.dirname(path), file)):
      missing.append(target)
  assert not missing, f"{os.path.relpath(path, ROOT)} links to missing files: {missing}"
