"""The solo runs whose numbers must not move when the training loop is rewritten.

`python tests/solo_reference.py` trains each run in RUNS and writes tests/data/solo_reference.json:
every metric of every step (timings left out) and a SHA-256 of every array of the final checkpoint,
with the machine they were computed on. tests/test_solo_reference.py trains the same runs with the
current code and compares: bit for bit on a machine with the same signature (XLA:CPU's results
depend on the vector instructions it compiles for), to rtol 1e-4 elsewhere. The reference was written
by the loop of resnet-jax 0.2.0 (commit 6cfadf9) before the one-loop redesign.
"""

import hashlib
import json
import os
import platform
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

PATH = os.path.join(REPO_ROOT, "tests", "data", "solo_reference.json")
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


if __name__ == "__main__":
  reference = {"signature": signature(), "runs": {}}
  for name in RUNS:
    with tempfile.TemporaryDirectory() as tmp:
      reference["runs"][name] = run(name, os.path.join(tmp, name))
  with open(PATH, "w") as f:
    json.dump(reference, f, indent=1, sort_keys=True)
  print(f"wrote {PATH}")
