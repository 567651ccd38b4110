"""A soak: one run in a bucket, interrupted many times at random points, must end bit-identical.

  python benchmarks/soak.py [--interruptions 20] [--steps 60] [--fault-fraction 0.05] [--seed 0]
                            [--kinds kill9,sigterm,bucket_away,server_restart] [--outage-s 10]

Runs `resnet-jax train` (ResNet-8 on the bundled digits, a checkpoint every step) with its workdir in
a GCS bucket served on loopback by fake-gcs-server (tests/gcs.py), behind a proxy that answers 503 or
429, resets connections or stalls for a few seconds on `--fault-fraction` of all requests. While it
trains, it is interrupted `--interruptions` times at random moments, each time by one of the
`--kinds` (default: the first three):

- kill -9 (nothing runs after it: the run resumes from its newest committed checkpoint);
- SIGTERM (the run saves a checkpoint and exits 75);
- the bucket going away: for `--outage-s` seconds every request's connection is reset unanswered
  (the proxy's `go_away`), while the run goes on (its clients retry);
- `server_restart`: the fake-gcs-server process itself is stopped for `--outage-s` seconds and
  started again on the same port over the same storage folder (its filesystem backend: the objects
  survive), while the run goes on. A restarted emulator forgets the resumable uploads in progress
  (GCS keeps them for a week), so an upload Orbax had begun can fail for good: the run then ends
  with exit 75 (EX_TEMPFAIL, "restart me"), which the soak obeys like a preemption and counts.

A killed or stopped run is started again with the same command. At the end it must hold exactly the
parameters of an uninterrupted run with a local workdir (bit for bit) and every step once in
metrics.jsonl. Prints the figures as JSON: interruptions of each kind, faults injected, requests,
restarts (and how many of them followed an exit 75 nobody asked for), steps computed more than
once, wall time. docs/results/faults/README.md holds a run's.
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from tests import gcs  # pylint: disable=g-import-not-at-top,wrong-import-position

KINDS = ("kill9", "sigterm", "bucket_away", "server_restart")
DEFAULT_KINDS = KINDS[:3]


def parse_kinds(text: str) -> tuple[str, ...]:
  """`--kinds`: a comma list of KINDS in any order; anything else ends the script with a sentence."""
  kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
  unknown = [k for k in kinds if k not in KINDS]
  if unknown or not kinds:
    what = f"unknown {', '.join(unknown)}" if unknown else "empty"
    sys.exit(f"soak.py: --kinds {text!r}: {what}; give a comma list among {', '.join(KINDS)}")
  return kinds


def train_command(workdir: str, steps: int, checkpoint_every: int = 1) -> list[str]:
  return [sys.executable, "-m", "resnet_jax.cli", "train", "--config", "configs/quickstart.py",
          "--workdir", workdir, "--config.model=resnet8", f"--config.total_steps={steps}",
          "--config.batch_size=32", f"--config.lr_decay_steps=({steps // 2},)",
          "--config.num_devices=1", f"--config.checkpoint_every_steps={checkpoint_every}",
          "--config.log_every_steps=1", "--config.eval_every_steps=0", "--config.keep_checkpoints=2"]


def _environment(url: str) -> dict:
  return {**os.environ, **gcs.env(url), "RESNET_JAX_HUGEPAGES": "0", "JAX_PLATFORMS": "cpu"}


def _printed_steps(text: str) -> int:
  """The highest `step N/M` the run printed (its progress lines), 0 if none."""
  return max((int(n) for n in re.findall(r"step (\d+)/\d+", text)), default=0)


def soak(folder: str, point_at, steps: int = 60, interruptions: int = 20,
         fault_fraction: float = 0.05, stall_s: float = 2.0, outage_s: float = 10.0,
         checkpoint_every: int = 1, max_gap_steps: int = 3, seed: int = 0, reference: str = "",
         kinds=DEFAULT_KINDS, log=print) -> dict:
  """Trains `steps` steps in a bucket through `interruptions` random interruptions; returns figures.

  The `kinds` of interruption come in a random order, each as often as the others; between two, the
  run stores 1 to `max_gap_steps` more steps. `point_at(url)` points this process's gcsfs at the
  server (to watch the run's metrics and read its final checkpoint); `folder` is a local scratch
  folder; `reference`, the local workdir of the same run uninterrupted (made here when not given).
  """
  from resnet_jax.run import metrics_log, storage  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from tests.helpers import max_abs_diff  # pylint: disable=g-import-not-at-top

  t0 = time.monotonic()
  rng = random.Random(seed)
  if not reference:
    reference = os.path.join(folder, "reference")
    subprocess.run(train_command(reference, steps, checkpoint_every), cwd=ROOT,
                   env=_environment("http://unused"), check=True, capture_output=True)
  server = gcs.Server(os.path.join(folder, "gcs")).start()
  proxy = gcs.FaultProxy(server.url, fraction=fault_fraction, stall_s=stall_s, max_faults=10**6,
                         active_s=10**6, seed=seed).start()
  point_at(server.url)
  workdir = f"gs://{gcs.BUCKET}/soak"
  history = f"{workdir}/config_history.jsonl"

  def logged() -> list[int]:
    return [r["step"] for r in metrics_log.read_metrics(workdir)]

  def starts() -> list[int]:
    if not storage.exists(history):
      return []
    return [json.loads(line)["start_step"] for line in storage.read_text(history).splitlines()]

  done = {kind: 0 for kind in kinds}
  order = [kinds[i % len(kinds)] for i in range(interruptions)]
  rng.shuffle(order)
  executed = restarts = tempfail_exits = 0
  proc = None
  try:
    while True:
      known_starts = len(starts())
      out_path = os.path.join(folder, f"segment{restarts}.log")
      with open(out_path, "w") as out:
        proc = subprocess.Popen(train_command(workdir, steps, checkpoint_every), cwd=ROOT,
                                env=_environment(proxy.url), stdout=out, stderr=subprocess.STDOUT)
      kind = None
      while proc.poll() is None and sum(done.values()) < interruptions:
        # A random moment: after 1 to max_gap_steps more steps are stored, then 0-0.5 s into the
        # next step or save.
        target = len(logged()) + rng.randint(1, max_gap_steps)
        while len(logged()) < target and proc.poll() is None:
          time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is not None:
          break
        kind = order[sum(done.values())]
        done[kind] += 1
        log(f"interruption {sum(done.values())}/{interruptions}: {kind} at ~step {len(logged())}")
        if kind == "bucket_away":
          proxy.go_away(outage_s)
          time.sleep(outage_s)
          continue  # the run goes on (or, past the retry budget, ends with 75 and is restarted)
        if kind == "server_restart":
          server.stop()
          time.sleep(outage_s)
          server.start()  # same port, same folder: the proxy and the run find it again
          continue  # the run goes on, or ends with 75 (an upload the emulator forgot) and restarts
        proc.send_signal(signal.SIGKILL if kind == "kill9" else signal.SIGTERM)
        break
      code = proc.wait()
      with open(out_path) as f:
        text = f.read()
      new = starts()[known_starts:]
      if new:
        executed += max(0, _printed_steps(text) - new[0])
      if "is read and written through gcsfs" not in text:
        raise RuntimeError(f"segment {restarts} did not say it uses gcsfs; its output: {out_path}")
      if code == 0 and logged()[-1:] == [steps]:
        break
      if code not in (-signal.SIGKILL, -signal.SIGTERM, 75):
        raise RuntimeError(f"segment {restarts} exited {code} unasked; its output: {out_path}")
      if code == 75 and kind != "sigterm":
        tempfail_exits += 1  # the run asked to be restarted (EX_TEMPFAIL): obeyed like a preemption
        log(f"segment {restarts} exited 75 (restart me): restarting it")
      restarts += 1
    _, expected = trainer_lib.restore(reference)
    _, state = trainer_lib.restore(workdir)
    once = logged() == list(range(1, steps + 1))
  finally:  # nothing left running, whatever happened
    if proc is not None and proc.poll() is None:
      proc.kill()
      proc.wait()
    proxy.stop()
    server.stop()
  return {
      "steps": steps, "interruptions": done, "restarts": restarts,
      "restarts_after_exit_75_unasked": tempfail_exits,
      "faults_injected": dict(proxy.counts), "requests": proxy.requests,
      "requests_refused_while_away": proxy.refused,
      "steps_computed": executed, "steps_recomputed": executed - steps,
      "max_abs_param_diff": max_abs_diff(state.params, expected.params),
      "batch_stats_equal": max_abs_diff(state.batch_stats, expected.batch_stats) == 0.0,
      "steps_logged_once": once,
      "final_step": int(state.step), "wall_s": round(time.monotonic() - t0, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--interruptions", type=int, default=20)
  parser.add_argument("--fault-fraction", type=float, default=0.05)
  parser.add_argument("--stall-s", type=float, default=2.0)
  parser.add_argument("--outage-s", type=float, default=10.0)
  parser.add_argument("--checkpoint-every", type=int, default=1)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS),
                      help=f"comma list of interruptions among {', '.join(KINDS)}")
  parser.add_argument("--keep", default="",
                      help="a folder to keep the segments' logs and the bucket in")
  args = parser.parse_args()
  kinds = parse_kinds(args.kinds)

  def point_at(url):
    os.environ.update(gcs.env(url))
    gcs.clear_client_caches()

  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # before gcsfs is imported
  with tempfile.TemporaryDirectory(prefix="resnet-jax-soak-") as scratch:
    folder = args.keep or scratch
    os.makedirs(folder, exist_ok=True)
    figures = soak(folder, point_at, steps=args.steps, interruptions=args.interruptions,
                   fault_fraction=args.fault_fraction, stall_s=args.stall_s,
                   outage_s=args.outage_s, checkpoint_every=args.checkpoint_every, seed=args.seed,
                   kinds=kinds,
                   log=lambda text: print(text, file=sys.stderr, flush=True))
  print(json.dumps(figures))
  ok = (figures["max_abs_param_diff"] == 0.0 and figures["batch_stats_equal"]
        and figures["steps_logged_once"] and figures["final_step"] == args.steps)
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  main()
