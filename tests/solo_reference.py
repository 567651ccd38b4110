"""The solo runs whose numbers must not move when the training loop is rewritten.

tests/data/solo_reference.json holds references: each is every metric of every step (timings left
out) and a SHA-256 of every array of the final checkpoint of each run in RUNS, with the signatures
(architecture, vector instructions, jaxlib) of the machines that computed exactly those numbers and
the code that did ("by"). XLA:CPU's results depend on the instructions it compiles for and on
jaxlib, so tests/test_solo_reference.py compares bit for bit against the reference of this machine's
signature; on a machine no reference was computed on, it compares the metrics of the first
reference to a tolerance (`rtol`) and warns that it did. Both stored references were computed by the
loop of resnet-jax 0.2.0 (commit 6cfadf9, before the one-loop redesign), on two x86-64 machines with
jaxlib 0.10.2, with and without AMX: they differ, and the code since reproduces each bit for bit.

`python tests/solo_reference.py` trains the runs here and compares them the same way.
`python tests/solo_reference.py --add` then records this machine (after a jaxlib upgrade, say): its
signature joins the reference whose numbers it reproduced bit for bit, or else, if its metrics are
within rtol 1e-4 of the first reference's, its numbers become a new reference. Run it only on a
commit whose numbers are trusted (one that passes the test): it makes that commit's numbers exact
from then on.
"""

import hashlib
import json
import math
import os
import platform
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

PATH = os.path.join(REPO_ROOT, "tests", "data", "solo_reference.json")
# Elsewhere XLA:CPU sums in another order for other instructions. The loss, accuracy and learning
# rate agree to 1e-4; the gradient and update norms to 1e-2: one ReLU input near 0 that lands on the
# other side moves them (the 0.2.0 loop's device-data-k2 run differs by 3.8e-3 in grad_norm/stem at
# step 5 between the two stored machines, its loss by under 1e-6).
RTOL, NORM_RTOL = 1e-4, 1e-2
# Each run: small_config overrides. Host batches (augmented), K steps per dispatch with the data on
# the device, pmap on 2 devices, jit on 2 devices, evaluations and checkpoints on a cadence.
RUNS = {
    "host-augmented": dict(augment="cifar", eval_every_steps=3, total_steps=6),
    "device-data-k2": dict(data_on_device=True, steps_per_dispatch=2, augment="cifar",
                           eval_every_steps=2, total_steps=6),
    "pmap-2": dict(parallelism="pmap", num_devices=2, eval_every_steps=3, total_steps=6),
    "jit-2-nesterov": dict(num_devices=2, nesterov=True, label_smoothing=0.1, total_steps=6,
                           eval_every_steps=6),
}


def signature() -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  flags = ""
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      flags = next((line for line in f if line.startswith("flags")), "")
  isa = [x for x in ("avx512f", "avx512_bf16", "amx_tile", "avx2") if f" {x}" in flags]
  return {"machine": platform.machine(), "isa": isa, "jaxlib": jax.lib.__version__}


def load() -> list[dict]:
  """The references, the first written by the loop of 0.2.0: each {"signatures": [...], "runs": ...}."""
  with open(PATH) as f:
    return json.load(f)["references"]


def exact_reference(references: list[dict], here: dict) -> dict | None:
  """The reference computed on a machine of signature `here`, whose numbers must come out exactly."""
  return next((r for r in references if here in r["signatures"]), None)


def rtol(key: str) -> float:
  """The fallback's tolerance for a metric: NORM_RTOL for the gradient and update norms."""
  return NORM_RTOL if "grad_norm" in key or key == "train/update_norm" else RTOL


def fallback_note(here: dict) -> str:
  return (f"no solo reference was computed on a machine like this one ({here}): the metrics are "
          f"compared to the first reference's to rtol {RTOL:g} ({NORM_RTOL:g} for gradient and "
          "update norms) and the checkpoint hashes are not; `python tests/solo_reference.py --add` "
          "on a trusted commit makes this machine's comparison exact")


def close(got: dict, want: dict) -> bool:
  """Every metric of every step within its `rtol`, the same steps, keys and checkpoint arrays."""
  return ([r.keys() for r in got["rows"]] == [r.keys() for r in want["rows"]]
          and sorted(got["checkpoint_sha256"]) == sorted(want["checkpoint_sha256"])
          and all(math.isclose(g[k], w[k], rel_tol=rtol(k)) for g, w in zip(got["rows"], want["rows"])
                  for k in w))


def _commit() -> str:
  import subprocess  # pylint: disable=g-import-not-at-top

  out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                       text=True)
  return f"commit {out.stdout.strip()}" if out.returncode == 0 else "an unknown commit"


def run(name: str, workdir: str) -> dict:
  """Trains RUNS[name] into `workdir`; returns its metrics (no timings) and checkpoint hashes."""
  from resnet_jax.run import metrics_log  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import loop  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from tests.helpers import small_config  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  config = small_config(**RUNS[name])
  loop.train_and_evaluate(config, workdir)
  rows = [{k: v for k, v in r.items() if not k.startswith("perf/")}
          for r in metrics_log.read_metrics(workdir)]
  _, state = trainer_lib.restore(workdir, num_devices=1)
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state))
  hashes = {jax.tree_util.keystr(p): hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]
            for p, x in leaves}
  return {"rows": rows, "checkpoint_sha256": hashes}


def main(add: bool) -> int:
  references, here = load(), signature()
  runs = {}
  for name in RUNS:
    with tempfile.TemporaryDirectory() as tmp:
      runs[name] = run(name, os.path.join(tmp, name))
  exact = exact_reference(references, here)
  if exact is not None:
    same = runs == exact["runs"]
    print(f"this machine has a reference: the runs {'match it bit for bit' if same else 'DIFFER'}")
    return 0 if same else 1
  same = next((r for r in references if r["runs"] == runs), None)
  near = all(close(runs[n], references[0]["runs"][n]) for n in RUNS)
  print(f"this machine ({here}) has no reference; its runs "
        + ("equal an existing reference's bit for bit" if same else
           f"are {'within' if near else 'NOT within'} tolerance of the first reference"))
  if not add or not (same or near):
    return 0 if (same or near) else 1
  if same:
    same["signatures"].append(here)
  else:
    references.append({"by": _commit(), "signatures": [here], "runs": runs})
  with open(PATH, "w") as f:
    json.dump({"references": references}, f, indent=1, sort_keys=True)
  print(f"recorded in {PATH}")
  return 0


if __name__ == "__main__":
  sys.exit(main(add="--add" in sys.argv[1:]))
