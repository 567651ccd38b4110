"""What a restart does with what it finds, and how a run stops: act only on what is proven.

A checkpoint moves aside only when its own files prove it damaged; transient storage errors are
retried, then end the run with exit 75 and nothing moved; any other error keeps its traceback. A
signal only records the request. Every check that can fail does so before the data is read.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from resnet_jax.data import in_memory
from resnet_jax.experiments import sweep
from resnet_jax.run import errors, metrics_log, storage
from resnet_jax.run import workdir as workdir_lib
from resnet_jax.run.errors import ConfigError, StorageUnavailableError, WorkdirInUseError
from resnet_jax.training import checkpoints, loop
from tests.helpers import small_config

STATE = {"w": jnp.arange(4096.0), "b": {"c": jnp.ones((3, 3))}}


def _saved(tmp_path, steps=(1, 2)):
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=5)
  for step in steps:
    ckpt.save(step, jax.tree_util.tree_map(lambda x, s=step: x + s, STATE), force=True)
    ckpt.wait()
  return ckpt


def _restore(ckpt):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return ckpt.restore_newest_valid(STATE, sharding)


def _data_files(tmp_path, step):
  root = os.path.join(tmp_path, "checkpoints", str(step), checkpoints.ITEM)
  return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
          if os.path.basename(d) == "d"]  # the array data (OCDBT's data files), not its metadata


def test_each_committed_step_has_its_file_sizes_recorded(tmp_path):
  _saved(tmp_path).close()
  record = json.loads((tmp_path / workdir_lib.CHECKPOINT_SIZES_FILE).read_text())
  assert sorted(record) == ["1", "2"]
  assert all(size > 0 for size in record["2"].values())
  assert f"{checkpoints.ITEM}/{checkpoints.METADATA_FILE}" in record["2"]


def test_a_truncated_data_file_is_proven_damage_and_moves_aside(tmp_path):
  ckpt = _saved(tmp_path)
  for victim in _data_files(tmp_path, 2):  # a crash of the disk: the metadata is intact
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 2)
  assert "changed size since the save committed" in ckpt.damage(2)
  with pytest.warns(UserWarning, match="step 2 is damaged .*changed size"):
    state, step = _restore(ckpt)
  assert step == 1 and float(state["w"][0]) == 1.0
  assert len(os.listdir(tmp_path / workdir_lib.DAMAGED_DIR)) == 1


@pytest.mark.parametrize("error", [ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
                                   TimeoutError("timed out"),
                                   ValueError("UNAVAILABLE: HTTP response code: 503")])
def test_transient_restore_errors_are_retried_then_exit_75_with_nothing_moved(tmp_path, monkeypatch,
                                                                              error):
  ckpt = _saved(tmp_path)
  calls = []

  def failing(*args, **kwargs):
    calls.append(1)
    raise error

  monkeypatch.setattr(checkpoints, "RESTORE_BACKOFF_S", 0.01)
  monkeypatch.setattr(ckpt.manager, "restore", failing)
  with pytest.raises(StorageUnavailableError, match="nothing was moved or deleted") as info:
    _restore(ckpt)
  assert errors.exit_code(info.value) == 75
  assert len(calls) == checkpoints.RESTORE_ATTEMPTS  # step 2 only: step 1 was never touched
  assert ckpt.all_steps() == [1, 2] and not (tmp_path / workdir_lib.DAMAGED_DIR).exists()


def test_a_transient_error_that_passes_is_retried_and_restores(tmp_path, monkeypatch):
  ckpt = _saved(tmp_path)
  real, fails = ckpt.manager.restore, [ConnectionResetError(), TimeoutError()]

  def flaky(*args, **kwargs):
    if fails:
      raise fails.pop()
    return real(*args, **kwargs)

  monkeypatch.setattr(checkpoints, "RESTORE_BACKOFF_S", 0.01)
  monkeypatch.setattr(ckpt.manager, "restore", flaky)
  state, step = _restore(ckpt)
  assert step == 2 and float(state["w"][0]) == 2.0


def test_a_transient_metadata_error_is_not_called_another_version(tmp_path, monkeypatch):
  ckpt = _saved(tmp_path)
  real, fails = ckpt.manager.item_metadata, [TimeoutError("read timed out")]

  def flaky(step):
    if fails:
      raise fails.pop()
    return real(step)

  monkeypatch.setattr(checkpoints, "RESTORE_BACKOFF_S", 0.01)
  monkeypatch.setattr(ckpt.manager, "item_metadata", flaky)
  assert _restore(ckpt)[1] == 2


def test_an_unknown_error_keeps_its_traceback_and_moves_nothing(tmp_path, monkeypatch):
  ckpt = _saved(tmp_path)

  def bug(*args, **kwargs):
    raise KeyError("a bug in the restore path")

  monkeypatch.setattr(ckpt.manager, "restore", bug)
  with pytest.raises(KeyError, match="a bug") as info:
    _restore(ckpt)
  assert any("files show no damage, so nothing was moved" in n for n in info.value.__notes__)
  assert ckpt.all_steps() == [1, 2] and not (tmp_path / workdir_lib.DAMAGED_DIR).exists()


def test_transient_errors_are_told_from_others():
  assert storage.is_transient(ConnectionRefusedError())
  assert storage.is_transient(OSError(errno.ETIMEDOUT, "timed out"))
  assert not storage.is_transient(RuntimeError("a bug"))
  wrapped = ValueError("restore failed")
  wrapped.__cause__ = ValueError("DEADLINE_EXCEEDED: while reading gs://b/x")
  assert storage.is_transient(wrapped)
  assert not storage.is_transient(FileNotFoundError(errno.ENOENT, "no such file"))
  assert not storage.is_transient(OSError(errno.ENOSPC, "No space left on device"))
  assert not storage.is_transient(MemoryError())


def test_resumed_rows_past_the_checkpoint_are_kept_aside(tmp_path):
  log = metrics_log.MetricsLog(str(tmp_path), 0, tensorboard=False)
  log.write([{"step": s, "train/loss": 1.0 / s} for s in range(1, 7)])
  log.close()
  with pytest.warns(UserWarning, match="3 row"):
    metrics_log.MetricsLog(str(tmp_path), 3, tensorboard=False).close()
  assert [r["step"] for r in metrics_log.read_metrics(str(tmp_path))] == [1, 2, 3]
  kept = (tmp_path / metrics_log.SUPERSEDED_FILE).read_text().splitlines()
  assert [json.loads(line)["step"] for line in kept] == [4, 5, 6]


SIGNALS = textwrap.dedent("""
    import os, random, signal, sys, threading, time
    from resnet_jax.run import console
    from resnet_jax.training.lifecycle import StopFlag

    class Slow:  # a terminal over a slow ssh pipe: each write takes a millisecond
      def write(self, text):
        time.sleep(0.001)
      def flush(self):
        pass
      def isatty(self):
        return False

    say = console.Console(stream=Slow()).say
    sent = []

    def pelt():  # many signals, at random points of the main thread's writes
      for i in range(int(sys.argv[1])):
        time.sleep(random.uniform(0.002, 0.02))
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM if i % 2 == 0 else signal.SIGUSR1)

    signal.signal(signal.SIGUSR1, lambda *a: None)
    with StopFlag(say) as stop:
      thread = threading.Thread(target=pelt)
      thread.start()
      while thread.is_alive():
        say("a line the console writes while signals arrive")
      thread.join()
      assert stop.reached(1) and stop.reason == "SIGTERM"
    print("stopped cleanly after", len(sent), "signals")
""")


def test_signals_while_the_console_writes_never_deadlock(tmp_path):
  """Before the handler stopped speaking, a SIGTERM inside `say` waited forever for its own lock."""
  script = tmp_path / "signals.py"
  script.write_text(SIGNALS)
  for _ in range(3):
    out = subprocess.run([sys.executable, str(script), "60"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()}, check=True)
    assert "stopped cleanly after 60 signals" in out.stdout


def test_a_workdir_in_use_is_refused_before_the_data_loads(tmp_path, monkeypatch):
  def no_data(*args, **kwargs):
    raise AssertionError("the data was loaded before the workdir was checked")

  monkeypatch.setattr(in_memory, "load_digits", no_data)
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with workdir_lib.Lock(workdir):
    with pytest.raises(WorkdirInUseError):
      loop.train_and_evaluate(small_config(), workdir)
    with pytest.raises(WorkdirInUseError):
      loop.train_group([small_config(seed=0), small_config(seed=1)],
                       [str(tmp_path / "other"), workdir])


def test_a_bad_member_fails_the_sweep_before_any_member_trains(tmp_path):
  sweep_file = tmp_path / "bad_sweep.py"
  sweep_file.write_text(textwrap.dedent("""
      from tests.helpers import small_config

      def get_config():
        return small_config()

      def get_grid():
        return {"learning_rate": [0.1, -1.0]}
  """))
  trained = []
  with pytest.raises(ConfigError, match=r"run learning_rate-1\.0: learning_rate=-1\.0 must be >= 0"):
    sweep.run_sweep(str(sweep_file), str(tmp_path / "sweep"),
                    train_fn=lambda config, workdir: trained.append(workdir), log=lambda _: None)
  assert not trained


@pytest.fixture
def file_size_limit():
  """Sets RLIMIT_FSIZE for this process (the kernel refuses larger writes with EFBIG), restored after."""
  import resource  # pylint: disable=import-outside-toplevel  # POSIX only
  old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
  old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a killed process

  def limit(size: int):
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, old_limit[1]))
  yield limit
  resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
  signal.signal(signal.SIGXFSZ, old_handler)


def test_a_save_refused_in_the_background_stops_the_run_and_keeps_the_last_good_one(
    tmp_path, file_size_limit):
  """A real refused write, not a mock: the asynchronous save of step 6 cannot write its ~0.7 MB data
  file under a 128 KiB file-size limit; Orbax reports it later, from its background thread."""
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(small_config(total_steps=4), workdir)
  file_size_limit(128 * 1024)  # the metrics and config files stay far below it
  with pytest.raises(errors.DiskFullError, match="file-size limit") as info:
    loop.train_and_evaluate(small_config(total_steps=8), workdir)
  file_size_limit(2**62)
  assert errors.exit_code(info.value) == errors.EXIT_IO_ERROR
  assert "last good checkpoint is step 4" in str(info.value)
  ckpt = checkpoints.Checkpointer(workdir)
  assert ckpt.all_steps() == [2, 4] and ckpt.damage(4) is None
  trainer = loop.Trainer(small_config(total_steps=8))
  state, step = ckpt.restore_newest_valid(trainer.abstract_state(), trainer.strategy.state_sharding)
  assert step == 4 and int(state.step) == 4
  ckpt.close()
