"""Read-ahead: batches computed ahead of the loop in background threads by Grain."""

import functools
from typing import Callable, Iterator

_READ_AHEAD_HORIZON = 2 ** 62  # "no end": read-ahead simply stops being consumed


class ReadAhead:
  """Serves `fn(key, k)` for consecutive k, computed ahead in background threads by Grain.

  A request that does not continue the previous one (a resume, another seed) restarts the read-ahead
  at that step, so results never depend on the order of requests: each is `fn(key, k)`.
  `num_threads=0` computes every request synchronously.
  """

  def __init__(self, fn: Callable, num_threads: int, buffer: int):
    self.fn, self.num_threads, self.buffer = fn, num_threads, max(buffer, num_threads)
    self._key, self._next, self._iter = None, None, None

  def get(self, key, k: int):
    if not self.num_threads:
      return self.fn(key, k)
    if self._iter is None or (key, k) != (self._key, self._next):
      self._iter = self._start(key, k, _READ_AHEAD_HORIZON)
      self._key = key
    self._next = k + 1
    return next(self._iter)

  def run(self, key, start: int, stop: int) -> Iterator:
    """fn(key, start), ..., fn(key, stop - 1) in order, read ahead (finite; for evaluation)."""
    if not self.num_threads:
      return (self.fn(key, k) for k in range(start, stop))
    return self._start(key, start, stop)

  def _start(self, key, start: int, stop: int) -> Iterator:
    import grain  # pylint: disable=g-import-not-at-top

    ds = grain.MapDataset.range(start, stop).map(functools.partial(self.fn, key))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=self.num_threads,
                                                     prefetch_buffer_size=self.buffer)))
