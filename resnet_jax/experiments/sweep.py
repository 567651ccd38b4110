"""Sweeps: a grid of runs declared in a config file, run into `<workdir>/<run name>/`.

A sweep file (configs/sweeps/*.py) defines `get_config()`, the base config, and `get_grid()`, an
ordered dict of key -> list of values; the members are the cartesian product, in order. Re-running a
sweep skips finished members and resumes unfinished ones (each member resumes from its own
checkpoints), so a preempted sweep is simply re-run. `shard="i/n"` runs members i, i+n, i+2n, ...
"""

import dataclasses
import itertools
import json
import traceback

from etils import epath
import jax
import ml_collections

from resnet_jax import config as config_lib
from resnet_jax.run import console, errors, metrics_log, storage
from resnet_jax.run import workdir as workdir_lib
from resnet_jax.run.errors import ConfigError
from resnet_jax.training import grouping, lifecycle, loop, validation



@dataclasses.dataclass(frozen=True)
class Member:
  """One run of a sweep: its name (its workdir under the sweep's), the grid values, its config."""
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
  """Expands a sweep file into its members; `overrides` (--config.key=value) apply to all of them.

  `spec` is `FILE` or `FILE:ARG`; ARG, if given, goes to both `get_config(ARG)` and `get_grid(ARG)`
  (e.g. a `:smoke` variant of a sweep with tiny models and steps). A file whose members need more
  than the grid's keys set on one base (e.g. each model's own preset, with ResNet-110's warm-up)
  defines `member_config(values[, ARG])`, which returns a member's whole config instead.
  """
  path, _, arg = spec.partition(":")
  module = config_lib.load_module(path)
  for fn in ("get_config", "get_grid"):
    if not hasattr(module, fn):
      raise ConfigError(f"sweep file {spec!r} has no {fn}(); see configs/sweeps/ for examples.")
  grid = config_lib.call(module, "get_grid", path, arg)
  if not grid or any(not isinstance(v, (list, tuple)) or not v for v in grid.values()):
    raise ConfigError(f"{spec}: get_grid() must map each key to a non-empty list of values.")
  clash = sorted(set(overrides or {}) & set(grid))
  if clash:
    # Every member would train the overridden value while its name and report still said the grid's.
    raise ConfigError(f"--config.{clash[0]} overrides a key the sweep's grid sets ({clash[0]}: "
                     f"{list(grid[clash[0]])}); every run would be mislabelled. Edit get_grid() in "
                     f"{spec.partition(':')[0]}, or train one run with `resnet-jax train`.")
  members = []
  for values in itertools.product(*grid.values()):
    chosen = dict(zip(grid.keys(), values))
    if hasattr(module, "member_config"):
      config = config_lib.call(module, "member_config", path, dict(chosen), arg)
    else:
      config = config_lib.call(module, "get_config", path, arg)
    config.lock()
    for key, value in chosen.items():
      if key not in config:
        raise ConfigError(f"{spec}: grid key {key!r}: {config_lib.unknown_key_error(key, config.keys())}")
      config[key] = value
    config_lib.apply_overrides(config, overrides or {})
    members.append(Member(run_name(chosen), chosen, config))
  names = [m.name for m in members]
  if len(set(names)) != len(names):
    raise ConfigError(f"{spec}: grid gives duplicate run names {names}.")
  return members


def parse_shard(shard: str) -> tuple[int, int]:
  try:
    i, n = (int(x) for x in shard.split("/"))
  except ValueError:
    raise ConfigError(f"--shard {shard!r} must look like i/n, e.g. 0/4.") from None
  if not 0 <= i < n:
    raise ConfigError(f"--shard {shard!r}: need 0 <= i < n.")
  return i, n


def read_status(run_dir) -> dict:
  path = epath.Path(run_dir) / workdir_lib.STATUS_FILE
  if not storage.exists(path):
    return {}
  return json.loads(storage.read_text(path))


def _write_status(run_dir, status: dict) -> None:
  storage.retrying(f"creating {run_dir}", epath.Path(run_dir).mkdir, parents=True, exist_ok=True)
  storage.write_atomic(epath.Path(run_dir) / workdir_lib.STATUS_FILE, json.dumps(status, indent=2))


def is_finished(run_dir, config) -> bool:
  rows = metrics_log.read_metrics(run_dir)
  return (read_status(run_dir).get("status") == "done" and bool(rows)
          and rows[-1]["step"] >= config.total_steps)


def wall_time_s(run_dir) -> float | None:
  """A run's wall time: seconds in its training loop (compilation and evaluations included),
  summed over resumed segments; the definition reports use too (`perf/elapsed_s`)."""
  elapsed = [r["perf/elapsed_s"] for r in metrics_log.read_metrics(run_dir) if "perf/elapsed_s" in r]
  return elapsed[-1] if elapsed else None


def run_sweep(spec: str, workdir: str, shard: str = "0/1", overrides=None, train_fn=None,
              log=None, vectorize: bool = False, group_fn=None) -> dict[str, str]:
  """Runs this shard's members; returns {name: "done" | "skipped" | "failed"}.

  A failing member is recorded in its `status.json` (with the error) and does not stop the others;
  a stop (SIGTERM, Ctrl-C) or a full disk stops the sweep, which resumes when re-run. The workdir
  is local or a bucket (gs://); locally each shard holds a lock on it for the sweep.
  `train_fn(config, workdir)` defaults to `loop.train_and_evaluate`.

  With `vectorize` (or a member's `vectorize` key), this shard's unfinished members that can train
  together (`resnet_jax.training.grouping`: same config but for seed and the optimizer's values)
  do, as one vmapped program per group, by `group_fn(configs, workdirs, say, on_done)` (default
  `loop.train_group`); the others run one by one as before. Shards split members, not groups.
  """
  train_fn = train_fn or loop.train_and_evaluate
  log = log or console.Console().say
  i, n = parse_shard(shard)
  members = load_members(spec, overrides)
  mine = members[i::n]
  for member in mine:  # every member before the first trains: a bad value fails now, not hours in
    try:
      validation.validate(member.config)
    except ConfigError as e:
      raise ConfigError(f"{spec}, run {member.name}: {e}") from None
  root = epath.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  log(f"sweep {spec}: {len(members)} runs, shard {i}/{n} runs {len(mine)}: "
      f"{', '.join(m.name for m in mine)}")
  results = {}

  def record(member: Member, run_dir: str, error: BaseException | None, tb: str = "") -> None:
    results[member.name] = _record_status(member, run_dir, error, tb)

  lock_name = workdir_lib.LOCK_FILE + (f"-shard{i}of{n}" if n > 1 else "")
  with workdir_lib.Lock(workdir, what="sweep", name=lock_name):
    todo = []
    for index, member in enumerate(mine, 1):
      if is_finished(str(root / member.name), member.config):
        log(f"[{index}/{len(mine)} {member.name}] finished already; skipped")
        results[member.name] = "skipped"
      else:
        lifecycle.check_resumable(member.config, str(root / member.name))  # before any trains
        todo.append((index, member))
    for group in _plan_groups(todo, vectorize, log):
      if len(group) > 1:
        _run_group([todo[j][1] for j in group], root, log, record, group_fn)
        continue
      index, member = todo[group[0]]
      _run_member(member, f"[{index}/{len(mine)} {member.name}]", str(root / member.name), train_fn,
                  log, record)
  return results


# Endings that stop the whole sweep (a re-run resumes it); any other error fails one member.
_STOPS = (errors.StoppedEarly, errors.DiskFullError, errors.StorageUnavailableError,
          KeyboardInterrupt)


def _record_status(member: Member, run_dir: str, error: BaseException | None, tb: str = "") -> str:
  """Writes the member's status.json: done (with its wall time) or failed (with the error)."""
  if error is not None:
    _write_status(run_dir, {"status": "failed", "error": f"{type(error).__name__}: {error}",
                            "traceback": tb, "overrides": member.overrides})
    return "failed"
  _write_status(run_dir, {"status": "done", "wall_time_s": wall_time_s(run_dir),
                          "overrides": member.overrides})
  return "done"


def _plan_groups(todo: list, vectorize: bool, log) -> list[list[int]]:
  """Indices into `todo` of each group to train together; a member alone is a group of one."""
  wanted = [vectorize or bool(m.config.get("vectorize", False)) for _, m in todo]
  if not any(wanted):
    return [[j] for j in range(len(todo))]
  for (_, member), want in zip(todo, wanted):
    why = grouping.unsupported(member.config) if want else None
    if why:
      log(f"{member.name} runs alone: {why}")
  return grouping.plan_groups([m.config for _, m in todo], wanted)


def _run_member(member: Member, label: str, run_dir: str, train_fn, log, record) -> None:
  """Trains one member alone; its failure is recorded, a stop of the whole sweep raises."""
  log(f"{label} training ({member.config.total_steps} steps) in {run_dir}")
  try:
    train_fn(member.config, run_dir)
  except _STOPS:
    raise  # the whole sweep stops; a re-run resumes this member
  except Exception as e:  # pylint: disable=broad-except
    log(f"{label} FAILED: {type(e).__name__}: {e}")
    record(member, run_dir, e, traceback.format_exc())
  else:
    record(member, run_dir, None)
  finally:
    jax.clear_caches()  # compiled steps of finished members would only hold memory


def _run_group(group: list[Member], root, log, record, group_fn) -> None:
  """Trains one vectorised group; each member's status is written as its chunk ends."""
  group_fn = group_fn or loop.train_group
  run_dirs = [str(root / m.name) for m in group]
  log(f"[group of {len(group)}: {', '.join(m.name for m in group)}] training together "
      f"({group[0].config.total_steps} steps), one vmapped step")
  seen = set()

  def on_done(j: int, error) -> None:
    seen.add(j)
    if error is not None:
      log(f"[{group[j].name}] FAILED: {type(error).__name__}: {error}")
    record(group[j], run_dirs[j], error)

  try:
    group_fn([m.config for m in group], run_dirs, log, on_done)
  except _STOPS:
    raise
  except Exception as e:  # pylint: disable=broad-except  # the group's setup failed: all its members
    tb = traceback.format_exc()
    for j, member in enumerate(group):
      if j not in seen:
        log(f"[{member.name}] FAILED: {type(e).__name__}: {e}")
        record(member, run_dirs[j], e, tb)
  finally:
    jax.clear_caches()
