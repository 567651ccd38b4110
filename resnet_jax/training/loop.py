"""The training loop: one for every run. A solo run is a group of one member; a vectorised group
(sweep members that differ only in seed and optimizer values) trains several with one step.

  config (validated) -> each member's RunFiles (writable, locked, may resume: before any data is
  read) -> Trainer (data, model, optimizer, compiled step) -> state (restored or new) -> the loop
  (run files, metrics log) -> checkpoints

The loop dispatches steps asynchronously and fetches metrics only when the `Cadence` says (log,
evaluation or checkpoint steps); members move in lockstep, and those left behind by a crash between
two members' saves catch up first, as a smaller group. A member whose loss turns non-finite stops
alone, keeping its earlier checkpoints; SIGTERM or a first Ctrl-C finishes the dispatch and saves
every member; a full disk is reported with the last good checkpoint (`lifecycle`). Each way of
stopping has its exit code (`resnet_jax.run.errors`).
"""

import collections
import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Optional

import jax
from etils import epath
import ml_collections

from resnet_jax.run import console, metrics_log
from resnet_jax.run.progress import ProgressBar
from resnet_jax.run.errors import StoppedEarly
from resnet_jax.training import goodput, grouping, memory, profiling, validation
from resnet_jax.training.cadence import Cadence
from resnet_jax.training.lifecycle import RunFiles, StopFlag, host_int, preflight
from resnet_jax.training.rows import fetched_rows
from resnet_jax.training.trainer import Trainer, restore


# Dispatches the host may queue ahead of the device. More buys no speed (one in flight already hides
# the host's work behind the device's), and everything queued runs before a stop can save: with a
# log interval's worth in flight, SIGTERM stopped the CIFAR preset ~100 steps (~30 s) later, as long
# as a spot VM's whole notice.
MAX_IN_FLIGHT = 2


@dataclasses.dataclass
class Member:
  """One run of the loop: its config, workdir, files and where it stands."""
  config: ml_collections.ConfigDict
  workdir: str
  prefix: str = ""          # "" for a solo run; "[name] " for a member of a group
  files: Optional[RunFiles] = None
  state: Any = None
  step: int = 0
  elapsed: float = 0.0      # seconds in the training loop, summed over resumed segments
  last: dict = dataclasses.field(default_factory=dict)  # the last metrics row (process 0)
  error: Optional[BaseException] = None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains one run (resuming from `workdir` if it holds a checkpoint); returns the last metrics row."""
  say, ledger = console.Console(enabled=jax.process_index() == 0).say, goodput.Ledger()
  validation.validate(config)  # every check that needs no I/O, then the workdir's, then the data
  member = Member(config, str(workdir))
  with RunFiles(config, member.workdir) as member.files:  # writable, locked, may resume: or nothing
    with console.phase(say, f"{workdir}: {config.model} on {config.dataset}, {config.total_steps} "
                       "steps; loading the data"):
      trainer = Trainer(config)
    train(trainer, [member], say, ledger)
  if member.error is not None:
    raise member.error
  return member.last


def train_group(configs: list, workdirs: list, say: Optional[Callable] = None,
                on_done: Optional[Callable] = None) -> list[Optional[BaseException]]:
  """Trains compatible `configs` together, each into its own workdir (resuming each from there).

  Splits them into chunks of `vectorize_max_members` (0: as many as fit in device memory) and runs
  the chunks in turn. Returns, per member, None (finished) or the NonFiniteError that failed it;
  `on_done(index, error)` is also called as each chunk ends. Errors of the whole group (a bad
  config, a workdir in use, a stop by SIGTERM, a full disk) raise, as `train_and_evaluate`'s do,
  and every member's config and workdir is checked before the data loads.
  """
  ledger = goodput.Ledger()
  if len(configs) != len(workdirs):
    raise ValueError(f"{len(configs)} configs but {len(workdirs)} workdirs.")
  for config, workdir in zip(configs, workdirs):
    validation.validate(config)
  grouping.check_group(configs)
  for config, workdir in zip(configs, workdirs):
    preflight(config, str(workdir))  # each chunk takes its workdirs' locks when it starts
  say = say or console.Console(enabled=jax.process_index() == 0).say
  base = configs[0]
  with console.phase(say, f"vectorised group of {len(configs)}: {base.model} on {base.dataset}, "
                     f"{base.total_steps} steps; loading the data"):
    trainer = Trainer(base, members=configs)
  cap = base.vectorize_max_members or memory.members_that_fit(trainer)
  if cap < len(configs):
    say(f"at most {cap} members fit in one group here (vectorize_max_members="
        f"{base.vectorize_max_members}); training {len(configs)} in chunks of {cap}")
  errors: list[Optional[BaseException]] = []
  for start in range(0, len(configs), cap):
    members = [Member(c, str(w), prefix=f"[{_name(w)}] ")
               for c, w in zip(configs[start:start + cap], workdirs[start:start + cap])]
    trainer.bind_members([m.config for m in members])
    with contextlib.ExitStack() as stack:
      for m in members:
        m.files = stack.enter_context(RunFiles(m.config, m.workdir))
      train(trainer, members, say, ledger)
    for i, member in enumerate(members, start):
      if on_done is not None:
        on_done(i, member.error)
      errors.append(member.error)
  return errors


def _name(workdir) -> str:
  return os.path.basename(os.path.normpath(str(workdir)))


def train(trainer: Trainer, members: list[Member], say: Callable,
          ledger: goodput.Ledger) -> list[Member]:
  """One loop around the members, whose RunFiles are open: restore or start each, train, wait for
  the last saves; then say the goodput (`ledger`: the run's, begun before its data loaded)."""
  template = trainer.abstract_state()  # restoring compiles nothing
  with console.phase(say, "restoring the last checkpoint or initialising the model", announce=False):
    for m in members:
      m.state, m.step = m.files.restore(template, trainer.strategy.state_sharding)
      if m.state is None:
        m.state = trainer.first_state(m.config.seed)
      else:
        say(f"{m.prefix}resumed from step {m.step} (checkpoint {m.files.ckpt.directory}/{m.step})")
      rows = m.files.start(trainer, m.step)
      m.last = rows[-1] if rows else {"step": m.step}
      m.elapsed = m.last.get("perf/elapsed_s", 0.0)  # wall time carries across resumes
  total = members[0].config.total_steps
  if all(m.step >= total for m in members):
    for m in members:
      say(f"{m.prefix or m.workdir + ': '}already finished ({m.step}/{total} steps); nothing to do.")
    return members
  _run(trainer, members, say, ledger)
  with console.phase(say, "saving: waiting for the last checkpoint to be written", announce=False):
    with ledger.timing("checkpoint"):
      for m in members:
        m.files.wait()
  summary = ledger.summary()
  say(goodput.describe(summary))
  for m in members:
    m.files.write_goodput(summary)
  return members


def _run(trainer: Trainer, members: list[Member], say: Callable, ledger: goodput.Ledger) -> None:
  """Trains the members to total_steps in lockstep; those behind catch up first, as a smaller group."""
  total = members[0].config.total_steps
  with StopFlag(say) as stop:
    while True:
      live = [m for m in members if m.error is None and m.step < total]
      if not live:
        break
      low = min(m.step for m in live)
      ahead = sorted({m.step for m in live if m.step > low})
      segment = [m for m in live if m.step == low]
      if ahead:
        say(f"{', '.join(m.prefix.strip(' []') for m in segment)} at step {low}, others at "
            f"{ahead[0]}: catching up first (a crash came between the members' checkpoints)")
      _segment(trainer, segment, low, ahead[0] if ahead else total, stop, say, ledger)
  for m in members:
    if m.error is None:
      say(f"{m.prefix}finished {total} steps; metrics in "
          f"{epath.Path(m.workdir) / metrics_log.METRICS_FILE}")


def _segment(trainer: Trainer, segment: list[Member], start: int, until: int, stop: StopFlag,
             say: Callable, ledger: goodput.Ledger) -> None:
  """Steps `start` -> `until` of the `segment` members: dispatch, then log, evaluate, checkpoint and
  stop as the cadence says."""
  c, strategy, grouped = segment[0].config, trainer.strategy, bool(segment[0].prefix)
  cadence = Cadence.from_config(c)
  if grouped:
    trainer.bind_members([m.config for m in segment])
  what = (f"the group's train step (first call); training {len(segment)} members" if grouped
          else "the train step (first call); training")
  state = strategy.put_state(strategy.stack([m.state for m in segment]))
  lead = segment[0].files.lead
  pending, t_log, n_log = [], time.perf_counter(), start
  n, n_pending = start, 0
  profile = profiling.Profile(c.profile_steps, segment[0].workdir)
  with console.phase(say, f"compiling {what} from step {start + 1}"):
    k = cadence.dispatch_size(n, until)
    profile.before(n, k)
    state, metrics = _compile(trainer, state, n, k, ledger)
  first = (k, metrics)
  progress = ProgressBar(c.total_steps, start) if lead else None
  with progress or contextlib.nullcontext(), profile:
    inflight = collections.deque()  # an output of each dispatch not yet seen done
    while n < until and any(m.error is None for m in segment):
      if first is not None:
        (k, metrics), first = first, None
      else:
        k = cadence.dispatch_size(n, until)
        state, metrics = _dispatch(trainer, state, n, k, ledger, profile)
      pending.append(metrics)
      n, n_pending = n + k, n_pending + k
      _track(n, metrics, inflight, progress)
      profile.after(n, metrics)
      act = cadence.after(n, stopping=stop.reached(n, k), segment_end=n == until)
      if not act.log:
        continue
      fetched = strategy.fetch(pending)  # one transfer: per metric a scalar, [M], [K] or [K, M]
      now = time.perf_counter()
      perf = ledger.rate(now - t_log, n - n_log)
      rows = _record(trainer, segment, state, fetched, (n - n_pending + 1, n), act.evaluate,
                     seconds=now - t_log, images=(n - n_log) * c.batch_size, progress=progress,
                     say=say, perf=perf, ledger=ledger)
      pending, n_pending, t_log, n_log = [], 0, now, n
      inflight.clear()  # everything up to n is done: its metrics were fetched
      if act.checkpoint:
        with ledger.timing("checkpoint"):
          for i in rows:
            segment[i].files.save(n, strategy.member_state(state, i))
      if act.stop:
        for i in rows:
          segment[i].files.wait()
        where = ("in each member's workdir" if grouped else f"in {segment[0].files.ckpt.directory}")
        raise StoppedEarly(f"stopped early by {stop.reason} at step {n}; checkpoint saved {where}. "
                           "Re-run the same command to resume.")
  for i, m in enumerate(segment):
    if m.error is None:
      m.state, m.step = strategy.member_state(state, i), until


def _dispatch(trainer: Trainer, state, n: int, k: int, ledger: goodput.Ledger,
              profile: profiling.Profile):
  """Dispatches steps n+1 .. n+k, timing their batches as waiting for input."""
  with ledger.timing("input"):  # drawing, augmenting and placing the batches
    fn, args = trainer.dispatch_call(n, k)
  profile.before(n, k)
  return fn(state, *args)


def _compile(trainer: Trainer, state, n: int, k: int, ledger: goodput.Ledger):
  """The first dispatch, which compiles: its end is the end of compilation, so the bar shows from
  step 1. Then the step's FLOPs (from jit's cache) and the device's peak (a CPU's: timed once)."""
  with ledger.timing("compile"):
    fn, args = trainer.dispatch_call(n, k)
    state, metrics = fn(state, *args)
    jax.block_until_ready(metrics)
    ledger.flops_per_step = goodput.step_flops(fn, state, args, k)
    ledger.peak = goodput.peak_flops(trainer.strategy.devices[0], trainer.config.dtype)[0]
  ledger.uncounted_steps = k
  return state, metrics


def _track(n: int, metrics: dict, inflight: collections.deque, progress) -> None:
  """Hands dispatch `n`'s output to the bar, and waits once more than MAX_IN_FLIGHT are queued."""
  latest = next(iter(metrics.values()))
  if progress is not None:
    # Progress from host-side counts of finished steps, at every step: no device sync; the bar's
    # ticker keeps counting them while a fetch waits for the device.
    progress.track(n, latest)
  inflight.append(latest)
  while len(inflight) > MAX_IN_FLIGHT:  # a stop saves after at most these
    inflight.popleft().block_until_ready()


def _record(trainer: Trainer, segment: list[Member], state, fetched: list, steps: tuple[int, int],
            evaluate: bool, *, seconds: float, images: int, progress, say: Callable,
            perf: dict, ledger: goodput.Ledger) -> dict[int, list[dict]]:
  """The live members' rows of the fetched steps (first, last), with their evaluation, throughput
  and wall time on the last, written to their logs; returns them by member index."""
  first, n = steps
  rows = fetched_rows(trainer.strategy, segment, fetched, first, say)  # checked before any save
  if evaluate and rows:
    if progress is not None:
      progress.update(n)  # the fetch waited for every step up to n
    members = f"{len(segment)} members " if segment[0].prefix else ""
    with progress.phase(f"evaluating {members}at step {n}") if progress else contextlib.nullcontext():
      with ledger.timing("evaluate"):
        evals = trainer.evaluate(state)
    for i, member_rows in rows.items():
      member_rows[-1].update(evals[i])
  for i, member_rows in rows.items():
    m = segment[i]
    m.elapsed += seconds
    member_rows[-1]["perf/images_per_sec"] = images / seconds  # each member's own throughput
    member_rows[-1]["perf/elapsed_s"] = m.elapsed
    member_rows[-1].update(perf)  # step time, TFLOP/s, share of peak, share waiting for input
    if m.files.log is not None:
      m.files.log.write(member_rows)
    m.last = member_rows[-1]
  if progress is not None:
    progress.update(n, next((r[-1] for r in rows.values()), None), force=True)
  return rows


def evaluate_checkpoint(workdir: str) -> dict[str, Any]:
  """Evaluates the newest checkpoint in `workdir` under the config the run wrote there."""
  trainer, state = restore(workdir)
  (result,) = trainer.evaluate(trainer.strategy.put_state(state))
  return {"step": host_int(state.step), **result}
