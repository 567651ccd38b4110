"""Solo runs compute what they computed before the one-loop redesign: every metric of every step and
every array of the final checkpoint, against tests/data/solo_reference.json (tests/solo_reference.py).

Bit for bit where the machine's signature (architecture, vector instructions, jaxlib) is the
reference's; elsewhere XLA:CPU compiles for other instructions and sums in another order, so the
metrics are compared to rtol 1e-4 and the checkpoint hashes are not compared.
"""

import json

import pytest

from tests import solo_reference


@pytest.fixture(scope="module")
def reference():
  with open(solo_reference.PATH) as f:
    return json.load(f)


@pytest.mark.parametrize("name", list(solo_reference.RUNS))
def test_solo_run_is_unchanged(reference, name, tmp_path):
  want = reference["runs"][name]
  got = solo_reference.run(name, str(tmp_path / name))
  assert [r["step"] for r in got["rows"]] == [r["step"] for r in want["rows"]]
  assert [sorted(r) for r in got["rows"]] == [sorted(r) for r in want["rows"]]
  if solo_reference.signature() == reference["signature"]:
    assert got["rows"] == want["rows"]
    assert got["checkpoint_sha256"] == want["checkpoint_sha256"]
  else:
    for g, w in zip(got["rows"], want["rows"]):
      assert g == pytest.approx(w, rel=1e-4), g["step"]
    assert sorted(got["checkpoint_sha256"]) == sorted(want["checkpoint_sha256"])
