"""Error curves from a run's metrics rows, as the paper plots and tabulates them.

Training error at a step is 100 x (1 - mean train/accuracy over a window of W consecutive steps), W
being 5% of the run's steps (at least 1): the per-step accuracy is measured on one augmented batch in
training mode, so it is averaged, like the paper's training curves. Test error comes from the
evaluations (eval/accuracy).
"""

import numpy as np


def window_size(num_steps: int) -> int:
  return max(1, round(0.05 * num_steps))


def train_error_curve(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
  """(steps, train error %) at the end of each consecutive window of W steps."""
  acc = np.array([r["train/accuracy"] for r in rows], np.float64)
  steps = np.array([r["step"] for r in rows])
  w = window_size(len(rows))
  n = len(acc) // w
  if n == 0:
    return steps[-1:], 100 * (1 - acc[-1:])
  # Windows aligned to end at the last step, so the last window is the "final" one.
  tail = acc[len(acc) - n * w:].reshape(n, w)
  return steps[len(acc) - n * w + w - 1::w], 100 * (1 - tail.mean(1))


def test_error_curve(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
  evals = [r for r in rows if "eval/accuracy" in r]
  return (np.array([r["step"] for r in evals]),
          np.array([100 * (1 - r["eval/accuracy"]) for r in evals], np.float64))
