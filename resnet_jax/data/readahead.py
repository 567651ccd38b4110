"""Read-ahead: batches computed ahead of the loop in background threads by Grain."""

import functools
from typing import Callable, Iterator

_READ_AHEAD_HORIZON = 2 ** 62  # "no end": read-ahead simply stops being consumed


class ReadAhead:
  """Serves `fn(key, k)` for consecutive k, computed ahead in background threads by Grain.

  Each key (a seed and batch size) has its own stream, so the vectorised members of a sweep, which
  ask for the same step under several seeds in turn, each keep reading ahead. A request that does not
  continue its key's previous one (a resume) restarts that stream at that step, so results never
  depend on the order of requests: each is `fn(key, k)`. `num_threads=0` computes every request
  synchronously.
  """

  MAX_STREAMS = 64  # more keys than this in turn: the oldest stream is dropped (and restarted if asked)

  def __init__(self, fn: Callable, num_threads: int, buffer: int):
    self.fn, self.num_threads, self.buffer = fn, num_threads, max(buffer, num_threads)
    self._streams = {}  # key -> (next step, iterator), oldest first

  def get(self, key, k: int):
    if not self.num_threads:
      return self.fn(key, k)
    expected, it = self._streams.pop(key, (None, None))
    if it is None or k != expected:
      it = self._start(key, k, _READ_AHEAD_HORIZON)
    self._streams[key] = (k + 1, it)
    if len(self._streams) > self.MAX_STREAMS:
      del self._streams[next(iter(self._streams))]
    return next(it)

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
