"""Read-ahead: batches computed ahead of the loop by Grain, in background threads or worker processes.

Threads share one Python interpreter: decoding and resizing run in PIL's C code without the GIL, but
the Python around them (boxes, NumPy calls, batching) does not, so threads stop scaling before a TPU
host's cores run out. Worker processes (`num_workers` > 0, Grain's `mp_prefetch`) each build whole
batches with their own interpreter. Either way batch k is `fn(key, k)`: Grain hands step k to worker
k mod W and reads the workers back in order, so the batches do not depend on the worker count.
"""

import functools
from typing import Callable, Iterator

_READ_AHEAD_HORIZON = 2 ** 62  # "no end": read-ahead simply stops being consumed


class ReadAhead:
  """Serves `fn(key, k)` for consecutive k, computed ahead in background threads or processes.

  Each key (a seed and batch size) has its own stream, so the vectorised members of a sweep, which
  ask for the same step under several seeds in turn, each keep reading ahead. A request that does not
  continue its key's previous one (a resume) restarts that stream at that step, so results never
  depend on the order of requests: each is `fn(key, k)`. `num_threads=0` and `num_workers=0`
  compute every request synchronously. With `num_workers` > 0, `fn` and `key` are pickled into each
  worker, started afresh for each stream (a few seconds: each imports the pipeline's modules), so a
  vectorised sweep of M members runs M x num_workers processes; `buffer` batches are read ahead in
  all per stream.
  """

  MAX_STREAMS = 64  # more keys than this in turn: the oldest stream is dropped (and restarted if asked)

  def __init__(self, fn: Callable, num_threads: int, buffer: int, num_workers: int = 0):
    self.fn, self.num_threads, self.num_workers = fn, num_threads, num_workers
    self.buffer = max(buffer, num_threads, num_workers)
    self._streams = {}  # key -> (next step, iterator), oldest first

  def get(self, key, k: int):
    if not (self.num_threads or self.num_workers):
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
    if not (self.num_threads or self.num_workers):
      return (self.fn(key, k) for k in range(start, stop))
    return self._start(key, start, stop)

  def close(self) -> None:
    """Drops every stream (and so stops their workers)."""
    self._streams.clear()

  def _start(self, key, start: int, stop: int) -> Iterator:
    import grain  # pylint: disable=g-import-not-at-top

    ds = grain.MapDataset.range(start, stop).map(functools.partial(self.fn, key))
    if not self.num_workers:
      return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=self.num_threads,
                                                       prefetch_buffer_size=self.buffer)))
    from absl import flags  # pylint: disable=g-import-not-at-top

    if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags; we parse none: defaults
      flags.FLAGS.mark_as_parsed()
    # In each worker, one thread builds its batches in turn (the processes are the parallelism);
    # each worker holds at most `per_worker` finished batches, so memory stays ~buffer batches.
    per_worker = max(1, self.buffer // self.num_workers)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
    return iter(ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers,
                                                            per_worker_buffer_size=per_worker)))
