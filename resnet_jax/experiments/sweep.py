"""Sweeps: a grid of runs declared in a config file, run into `<workdir>/<run name>/`.

A sweep file (configs/sweeps/*.py) defines `get_config()`, the base config, and `get_grid()`, an
ordered dict of key -> list of values; the members are the cartesian product, in order. Re-running a
sweep skips finished members and resumes unfinished ones (each member resumes from its own
checkpoints), so a preempted sweep is simply re-run. `shard="i/n"` runs members i, i+n, i+2n, ...
"""

import dataclasses
import itertools
import json
import os
import time
import traceback

import jax
import ml_collections

from resnet_jax import config as config_lib
from resnet_jax.training import metrics_log

STATUS_FILE = "status.json"


@dataclasses.dataclass(frozen=True)
class Member:
  name: str
  overrides: dict
  config: ml_collections.ConfigDict


def run_name(overrides: dict) -> str:
  """`plain56-seed1` for {"model": "plain56", "seed": 1}: the model's name bare, other keys prefixed."""
  parts = []
  for key, value in overrides.items():
    text = "x".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    parts.append(text if key == "model" else f"{key.split('.')[-1]}{text}")
  return "-".join(parts).replace("/", "_") or "run"


def load_members(spec: str, overrides: dict[str, str] | None = None) -> list[Member]:
  """Expands a sweep file into its members; `overrides` (--config.key=value) apply to all of them."""
  module = config_lib.load_module(spec.partition(":")[0])
  for fn in ("get_config", "get_grid"):
    if not hasattr(module, fn):
      raise ValueError(f"sweep file {spec!r} has no {fn}(); see configs/sweeps/ for examples.")
  grid = module.get_grid()
  if not grid or any(not isinstance(v, (list, tuple)) or not v for v in grid.values()):
    raise ValueError(f"{spec}: get_grid() must map each key to a non-empty list of values.")
  members = []
  for values in itertools.product(*grid.values()):
    chosen = dict(zip(grid.keys(), values))
    config = module.get_config()
    config.lock()
    for key, value in chosen.items():
      if key not in config:
        raise ValueError(f"{spec}: grid key {key!r} is not a config key (see resnet_jax/config/defaults.py).")
      config[key] = value
    config_lib.apply_overrides(config, overrides or {})
    members.append(Member(run_name(chosen), chosen, config))
  names = [m.name for m in members]
  if len(set(names)) != len(names):
    raise ValueError(f"{spec}: grid gives duplicate run names {names}.")
  return members


def parse_shard(shard: str) -> tuple[int, int]:
  try:
    i, n = (int(x) for x in shard.split("/"))
  except ValueError:
    raise ValueError(f"--shard {shard!r} must look like i/n, e.g. 0/4.") from None
  if not 0 <= i < n:
    raise ValueError(f"--shard {shard!r}: need 0 <= i < n.")
  return i, n


def read_status(run_dir: str) -> dict:
  path = os.path.join(run_dir, STATUS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _write_status(run_dir: str, status: dict) -> None:
  os.makedirs(run_dir, exist_ok=True)
  tmp = os.path.join(run_dir, STATUS_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(status, f, indent=2)
  os.replace(tmp, os.path.join(run_dir, STATUS_FILE))


def is_finished(run_dir: str, config) -> bool:
  rows = metrics_log.read_metrics(run_dir)
  return (read_status(run_dir).get("status") == "done" and bool(rows)
          and rows[-1]["step"] >= config.total_steps)


def run_sweep(spec: str, workdir: str, shard: str = "0/1", overrides=None, train_fn=None,
              log=print) -> dict[str, str]:
  """Runs this shard's members; returns {name: "done" | "skipped" | "failed"}.

  A failing member is recorded in its `status.json` (with the error) and does not stop the others.
  `train_fn(config, workdir)` defaults to `train.train_and_evaluate`.
  """
  if train_fn is None:
    from resnet_jax.training import loop  # pylint: disable=g-import-not-at-top  # compiles nothing until called
    train_fn = loop.train_and_evaluate
  i, n = parse_shard(shard)
  members = load_members(spec, overrides)
  mine = members[i::n]
  log(f"sweep {spec}: {len(members)} runs, shard {i}/{n} runs {len(mine)}: "
      f"{', '.join(m.name for m in mine)}")
  results = {}
  for member in mine:
    run_dir = os.path.join(workdir, member.name)
    if is_finished(run_dir, member.config):
      log(f"[{member.name}] finished already; skipped")
      results[member.name] = "skipped"
      continue
    log(f"[{member.name}] training ({member.config.total_steps} steps)")
    t0 = time.time()
    try:
      train_fn(member.config, run_dir)
    except Exception as e:  # pylint: disable=broad-except
      if type(e).__name__ == "StoppedEarly":  # preemption: stop the sweep, resume on re-run
        raise
      log(f"[{member.name}] FAILED: {type(e).__name__}: {e}")
      _write_status(run_dir, {"status": "failed", "error": f"{type(e).__name__}: {e}",
                              "traceback": traceback.format_exc(), "overrides": member.overrides})
      results[member.name] = "failed"
    else:
      _write_status(run_dir, {"status": "done", "seconds": time.time() - t0,
                              "overrides": member.overrides})
      results[member.name] = "done"
    finally:
      jax.clear_caches()  # compiled steps of finished members would only hold memory
  return results
