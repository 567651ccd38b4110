"""What the persistent compilation cache saves: wall time of a second start, cold cache vs warm.

  python benchmarks/second_start.py [--only quickstart|sweep] [--keep DIR]

Runs the `resnet-jax` command as a user does, in subprocesses, each with its own compilation cache
folder (RESNET_JAX_COMPILATION_CACHE), and prints the wall time of each start:

- quickstart (`configs/quickstart.py`, ResNet-20 on the digits, 300 steps):
  1. a first run in a new workdir with an empty cache (cold: compiles everything);
  2. the same command in another new workdir with the cache the first one filled (warm: trains the
     same steps again, compiles nothing it compiled before);
  3. the finished run started again (it has nothing left to do: restore, say so, exit), warm;
  4. the same with the cache off, as every start was before the cache existed;
- the digits degradation sweep (README's first command; four members): a first sweep, then the
  finished sweep started again, warm and with the cache off.

A wall time is the result here, so run it alone on a quiet machine.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(args: list[str], cache: str) -> float:
  """One `resnet-jax` command with the cache at `cache` ("off" for none); its wall seconds."""
  env = {**os.environ, "RESNET_JAX_COMPILATION_CACHE": cache}
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "resnet_jax.cli", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise SystemExit(f"resnet-jax {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
  return wall


def quickstart(tmp: str) -> list[tuple[str, float]]:
  cache = os.path.join(tmp, "cache_quickstart")
  cmd = lambda w: ["train", "--config", "configs/quickstart.py", "--workdir", os.path.join(tmp, w)]
  return [("quickstart, first run, cold cache", start(cmd("q1"), cache)),
          ("quickstart, the same run afresh (new workdir), warm cache", start(cmd("q2"), cache)),
          ("quickstart, the finished run started again, warm cache", start(cmd("q2"), cache)),
          ("quickstart, the finished run started again, cache off", start(cmd("q2"), "off"))]


def sweep(tmp: str) -> list[tuple[str, float]]:
  cache = os.path.join(tmp, "cache_sweep")
  cmd = ["sweep", "--config", "configs/sweeps/degradation_digits.py", "--workdir",
         os.path.join(tmp, "sweep")]
  return [("digits sweep, first run, cold cache", start(cmd, cache)),
          ("digits sweep, the finished sweep started again, warm cache", start(cmd, cache)),
          ("digits sweep, the finished sweep started again, cache off", start(cmd, "off"))]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", choices=("quickstart", "sweep"), default=None)
  parser.add_argument("--keep", default="", help="keep the workdirs and caches in this folder")
  args = parser.parse_args(argv)
  tmp = args.keep or tempfile.mkdtemp(prefix="second_start_")
  os.makedirs(tmp, exist_ok=True)
  try:
    rows = []
    for name, fn in (("quickstart", quickstart), ("sweep", sweep)):
      if args.only in (None, name):
        for label, wall in fn(tmp):
          print(f"{label}: {wall:.1f} s", flush=True)
          rows.append((label, wall))
  finally:
    if not args.keep:
      shutil.rmtree(tmp, ignore_errors=True)
  print("\n| start | wall s |\n|---|---|")
  for label, wall in rows:
    print(f"| {label} | {wall:.1f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
