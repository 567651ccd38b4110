"""benchmarks/table6.sh --smoke: the Table 6 / Fig. 6 script end to end on CPU, on real CIFAR-10."""

import csv
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_table6_smoke_runs_the_whole_path(cifar10_data_dir, tmp_path):
  workdir = tmp_path / "table6"
  # One device, as on the single GPU the script is written for (the test session simulates 8).
  env = {**os.environ, "PYTHON": sys.executable, "RESNET_JAX_HUGEPAGES": "0", "XLA_FLAGS": ""}
  proc = subprocess.run(["bash", "benchmarks/table6.sh", "--smoke", "--data-dir", cifar10_data_dir,
                         str(workdir)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # The estimate comes before the long run, from each net's timed step.
  estimate = (workdir / "estimate.txt").read_text()
  assert "resnet8:" in estimate and "plain8:" in estimate and "estimated total:" in estimate
  assert proc.stderr.index("estimated total") < proc.stderr.index("running the sweep")
  assert "seeds together" in estimate
  # Each net's seeds train as one vectorised group, each still its own run.
  assert "[group of 2: resnet8-seed0, resnet8-seed1] training together" in proc.stderr
  assert "[group of 2: plain8-seed0, plain8-seed1] training together" in proc.stderr
  with open(workdir / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["run"] for r in rows) == ["plain8-seed0", "plain8-seed1", "resnet8-seed0",
                                            "resnet8-seed1"]
  assert all(r["steps"] == "20" and r["final_test_error"] for r in rows)
  summary = (workdir / "summary.md").read_text()
  assert "| resnet8 | 2 |" in summary and "+-" in summary  # mean +- std over the two seeds
  for figure in ("curves.png", "grad_norms.png", "responses.png"):
    assert (workdir / figure).stat().st_size > 10_000, figure


def test_table6_says_every_member_failed_when_no_report_was_written(tmp_path):
  workdir, empty = tmp_path / "table6", tmp_path / "no_data"
  env = {**os.environ, "PYTHON": sys.executable, "RESNET_JAX_HUGEPAGES": "0", "XLA_FLAGS": ""}
  proc = subprocess.run(["bash", "benchmarks/table6.sh", "--smoke", "--data-dir", str(empty),
                         str(workdir)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "table6.sh: every member failed: plain8-seed0: DataUnavailableError: cifar10 is not " \
         "prepared" in proc.stderr
  assert "no report was written" in proc.stderr and "report: " not in proc.stderr
  assert not (workdir / "summary.md").exists()
