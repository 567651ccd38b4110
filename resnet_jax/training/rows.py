"""The metrics rows of fetched steps: one row per step, each checked finite, per member of a group.

A member whose loss or gradient norm turns non-finite fails alone (`NonFiniteError` on it); the
loop writes the others' rows.
"""

import math
from typing import Callable

import numpy as np

from resnet_jax.run.errors import NonFiniteError


def fetched_rows(strategy, segment: list, fetched: list, first: int,
                say: Callable) -> dict[int, list[dict]]:
  """Each live member's rows of the fetched steps; a member with a non-finite value fails alone."""
  rows = {}
  for i, m in enumerate(segment):
    if m.error is not None:
      continue
    try:
      rows[i] = metric_rows([strategy.member_values(f, i) for f in fetched], first)
    except NonFiniteError as e:
      m.error = e
      if m.prefix:
        say(f"{m.prefix}FAILED: {e} The other members go on.")
  return rows


def metric_rows(fetched: list[dict], first_step: int) -> list[dict]:
  """One row per step from host metrics of consecutive dispatches; raises on a non-finite value."""
  rows = []
  per_step = []
  for metrics in fetched:  # scalars, or stacked [K] from K steps in one dispatch
    k = np.size(next(iter(metrics.values())))
    per_step += [{key: np.ravel(v)[i] for key, v in metrics.items()} for i in range(k)]
  for i, metrics in enumerate(per_step):
    row = {"step": first_step + i, **{k: float(v) for k, v in metrics.items()}}
    bad = [k for k in ("train/loss", "train/grad_norm") if not math.isfinite(row[k])]
    if bad:
      raise NonFiniteError(
          f"non-finite {', '.join(bad)} at step {row['step']} ({', '.join(str(row[k]) for k in bad)}). "
          "The checkpoints saved before it are kept; lower learning_rate, add warm-up or "
          "grad_clip_norm, and re-run to resume from the last good checkpoint.")
    rows.append(row)
  return rows
