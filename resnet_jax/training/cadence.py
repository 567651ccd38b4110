"""When a run dispatches, logs, evaluates, checkpoints and stops: one object decides, from the config.

Dispatches of K = `steps_per_dispatch` steps end at multiples of K (so a run resumed at any step
keeps the same cadence); the host fetches metrics only at a log, evaluation or checkpoint step, so
nothing waits on the device in between. The final step always evaluates and checkpoints; a stop
(SIGTERM, Ctrl-C) and the end of a segment (a vectorised member catching up) checkpoint.
"""

import dataclasses

import ml_collections


@dataclasses.dataclass(frozen=True)
class Actions:
  """What happens after the dispatch that ended at a step."""
  log: bool        # fetch the metrics of the steps since the last fetch and write them
  evaluate: bool   # run the test (or validation) split
  checkpoint: bool
  stop: bool       # a stop was asked for: save and raise StoppedEarly


@dataclasses.dataclass(frozen=True)
class Cadence:
  total_steps: int
  steps_per_dispatch: int = 1
  log_every_steps: int = 1
  eval_every_steps: int = 0        # 0: at the end only
  checkpoint_every_steps: int = 0  # 0: at the end only

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Cadence":
    return cls(config.total_steps, config.steps_per_dispatch, config.log_every_steps,
               config.eval_every_steps, config.checkpoint_every_steps)

  def dispatch_size(self, step: int, until: int) -> int:
    """Steps in the dispatch that starts after `step`: up to the next multiple of K, or `until`."""
    k = self.steps_per_dispatch
    return min(k - step % k, until - step)

  def after(self, step: int, *, stopping: bool = False, segment_end: bool = False) -> Actions:
    """The actions after the dispatch that ended at `step` (1-based: steps done so far)."""
    final = step == self.total_steps
    evaluate = final or _every(step, self.eval_every_steps)
    checkpoint = final or stopping or segment_end or _every(step, self.checkpoint_every_steps)
    log = evaluate or checkpoint or _every(step, self.log_every_steps)
    return Actions(log=log, evaluate=evaluate, checkpoint=checkpoint, stop=stopping)


def _every(step: int, every: int) -> bool:
  return bool(every) and step % every == 0
