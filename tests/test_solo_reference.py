"""Solo runs compute what they computed before the one-loop redesign: every metric of every step and
every array of the final checkpoint, against tests/data/solo_reference.json (tests/solo_reference.py).

Bit for bit on a machine whose signature (architecture, vector instructions, jaxlib) a reference was
computed on; elsewhere XLA:CPU compiles for other instructions and sums in another order, so the
metrics are compared to a tolerance (`solo_reference.rtol`), the checkpoint hashes are not compared,
and a warning says so.
"""

import copy
import warnings

import pytest

from tests import solo_reference


@pytest.fixture(scope="module")
def references():
  return solo_reference.load()


@pytest.mark.parametrize("name", list(solo_reference.RUNS))
def test_solo_run_is_unchanged(references, name, tmp_path):
  here = solo_reference.signature()
  exact = solo_reference.exact_reference(references, here)
  want = (exact or references[0])["runs"][name]
  got = solo_reference.run(name, str(tmp_path / name))
  assert [r["step"] for r in got["rows"]] == [r["step"] for r in want["rows"]]
  assert [sorted(r) for r in got["rows"]] == [sorted(r) for r in want["rows"]]
  if exact is not None:
    assert got["rows"] == want["rows"]
    assert got["checkpoint_sha256"] == want["checkpoint_sha256"]
    return
  warnings.warn(f"{name}: {solo_reference.fallback_note(here)}")
  for g, w in zip(got["rows"], want["rows"]):
    for key in w:
      assert g[key] == pytest.approx(w[key], rel=solo_reference.rtol(key)), (g["step"], key)
  assert sorted(got["checkpoint_sha256"]) == sorted(want["checkpoint_sha256"])


def test_each_signature_has_its_exact_reference_and_the_fallback_can_fail(references):
  for reference in references:
    for here in reference["signatures"]:
      assert solo_reference.exact_reference(references, here) is reference
  upgraded = {**references[0]["signatures"][0], "jaxlib": "0.0.0"}  # no exact reference there
  assert solo_reference.exact_reference(references, upgraded) is None
  # The fallback tolerates what another machine's instructions do (the stored machines' runs differ)
  # and not a loss moved by 1e-3.
  first, second = references[0]["runs"], references[-1]["runs"]
  assert first != second and all(solo_reference.close(second[n], first[n]) for n in first)
  moved = copy.deepcopy(second["host-augmented"])
  moved["rows"][-1]["train/loss"] *= 1 + 1e-3
  assert not solo_reference.close(moved, first["host-augmented"])
