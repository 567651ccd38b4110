"""A JAX profiler trace of the steps `profile_steps` names ("A:B": steps A to B, as metrics.jsonl
numbers them), written to `<workdir>/profile/`: TensorBoard's profile plugin reads that folder
(`tensorboard --logdir <workdir>/profile`), and Perfetto (ui.perfetto.dev) its `*.trace.json.gz`.

The trace starts before the dispatch that holds step A and stops once the dispatch that holds step B
has finished on the device (one wait, in the profiled steps only), so it holds whole steps.
"""

import os
from typing import Optional

import jax

from resnet_jax.run import workdir as workdir_lib


def parse(spec: str) -> Optional[tuple[int, int]]:
  """(A, B) of "A:B", or None for "" (no profile). Raises ValueError on anything else."""
  if not spec.strip():
    return None
  first, sep, last = spec.partition(":")
  if not sep or not first.strip().isdigit() or not last.strip().isdigit():
    raise ValueError(f"{spec!r} is not A:B")
  a, b = int(first), int(last)
  if not 1 <= a <= b:
    raise ValueError(f"{spec!r}: need 1 <= A <= B")
  return a, b


class Profile:
  """Starts and stops the trace around the profiled steps; a context that stops it on any exit."""

  def __init__(self, spec: str, workdir: str, enabled: bool = True):
    self.steps = parse(spec) if enabled else None
    self.directory = os.path.join(workdir, workdir_lib.PROFILE_DIR)
    self.active = False

  def before(self, n: int, k: int) -> None:
    """Called before dispatching steps n+1 .. n+k."""
    if self.steps and not self.active and n < self.steps[0] <= n + k:
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self.active = True

  def after(self, n: int, output) -> None:
    """Called after dispatching steps up to n, with an output of that dispatch."""
    if self.active and n >= self.steps[1]:
      jax.block_until_ready(output)
      self.stop()

  def stop(self) -> None:
    if self.active:
      self.active = False
      jax.profiler.stop_trace()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.stop()
