"""Seconds from SIGTERM to a durable checkpoint: what a spot or preemptible VM's ~30 s notice needs.

Trains a preset in a subprocess, sends SIGTERM at a random point once training is under way, and
times the process's exit (the loop exits only after the checkpoint is committed, `RunFiles.wait`),
then reads how many steps ran after the signal. The same run with the host allowed to queue a whole
log interval of dispatches ahead of the device (`--unbounded`: the loop before it bounded its work
in flight) is alternated with it as the reference, so both meet the same machine.

  python benchmarks/preemption.py --config configs/cifar10_fast.py:resnet20 \\
      --config.data_dir=/path/to/tfds --repeats 2
  python benchmarks/preemption.py --bucket ...    # the workdir in a bucket (GCS emulator, loopback)

Prints one line per trial and a summary with the CPU model.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from etils import epath

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
# The loop, entered with its in-flight bound replaced (`--unbounded`: as before the bound).
LAUNCH = ("import sys; from resnet_jax.training import loop; loop.MAX_IN_FLIGHT = int(sys.argv[1]); "
          "from resnet_jax import cli; sys.exit(cli.main(sys.argv[2:]))")


def cpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
  except (OSError, subprocess.CalledProcessError, StopIteration):
    return "unknown CPU"


def rows(workdir: str) -> list[dict]:
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trial(args, overrides: list[str], in_flight: int, workdir: str) -> dict:
  """One run: SIGTERM `args.delay_s` (+ up to 5 s, at random) after the first metrics log."""
  cmd = [sys.executable, "-c", LAUNCH, str(in_flight), "train", "--config", args.config,
         "--workdir", workdir, *overrides]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=os.environ.copy())
  try:
    while not rows(workdir):
      if proc.poll() is not None:
        raise SystemExit(f"the run ended before logging (exit {proc.returncode}):\n{proc.stderr.read()}")
      time.sleep(0.2)
    logged_at, first = time.perf_counter(), rows(workdir)[-1]  # the log step's row has the rate
    time.sleep(args.delay_s + random.uniform(0, 5))
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    seconds = time.perf_counter() - sent
  finally:
    if proc.poll() is None:
      proc.kill()
  steps = sorted(int(p.name) for p in (epath.Path(workdir) / "checkpoints").iterdir()
                 if p.name.isdigit() and (p / "commit_success.txt").exists())
  # The step the signal met: the steps done by then at the rate of the logged rows.
  rate = first.get("perf/images_per_sec", 0.0) / args.batch_size
  at_signal = first["step"] + rate * (sent - logged_at)
  return {"exit": proc.returncode, "seconds": seconds, "checkpoint": steps[-1] if steps else None,
          "steps_after_signal": (steps[-1] - at_signal) if steps else None, "stderr": err}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--config", default="configs/cifar10_fast.py:resnet20")
  parser.add_argument("--workdir", default="", help="folder for the runs (default: temp)")
  parser.add_argument("--bucket", action="store_true",
                      help="the runs' workdirs in a bucket: fake-gcs-server on loopback (test extra)")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--delay_s", type=float, default=5.0, help="seconds after the first row, + 0-5")
  parser.add_argument("--batch_size", type=int, default=128)
  args, overrides = parser.parse_known_args()
  overrides += ["--config.log_every_steps=100", "--config.checkpoint_every_steps=0",
                "--config.eval_every_steps=0", "--config.total_steps=100000",
                "--config.lr_decay_steps=()", "--config.lr_schedule=constant"]
  root = args.workdir or tempfile.mkdtemp(prefix="preemption-")
  server = None
  if args.bucket:
    from tests import gcs  # pylint: disable=g-import-not-at-top,import-outside-toplevel

    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # the emulator has no HNS
    server = gcs.Server(os.path.join(root, "gcs")).start()
    os.environ.update(gcs.env(server.url))
    gcs.clear_client_caches()
    root = f"gs://{gcs.BUCKET}/preemption"
  results = {"bounded": [], "unbounded": []}
  for r in range(args.repeats):
    for name, in_flight in (("bounded", 2), ("unbounded", 10**9)):
      workdir = os.path.join(root, f"{name}-{r}")
      result = trial(args, overrides, in_flight, workdir)
      results[name].append(result)
      print(f"{name:9s} trial {r}: exit {result['exit']}, {result['seconds']:.1f} s from SIGTERM to a "
            f"durable checkpoint (step {result['checkpoint']}, ~{result['steps_after_signal']:.0f} "
            "steps after the signal)", flush=True)
      if result["exit"] != 75:  # SIGTERM's exit: saved and stopped; anything else is worth seeing
        print(result["stderr"][-3000:], file=sys.stderr)
      if not args.workdir and not args.bucket:
        shutil.rmtree(workdir, ignore_errors=True)
  if server is not None:
    server.stop()
  print(f"\n{args.config}, {'bucket' if '://' in root else 'local'} workdir, {cpu_model()}, "
        f"{time.strftime('%Y-%m-%d')}")
  for name, trials in results.items():
    secs = sorted(t["seconds"] for t in trials)
    steps = sorted(t["steps_after_signal"] for t in trials)
    print(f"  {name:9s}: {secs[0]:.1f}-{secs[-1]:.1f} s to a durable checkpoint, "
          f"{steps[0]:.0f}-{steps[-1]:.0f} steps after the signal ({len(trials)} trials)")


if __name__ == "__main__":
  main()
