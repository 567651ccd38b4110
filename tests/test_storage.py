"""Bucket workdirs on a real GCS JSON API (fake-gcs-server on loopback, tests/gcs.py): which client
reads gs://, what is retried, and how a run ends when the bucket stays away.

In-process and fast; the end-to-end runs through the emulator (train, kill -9, faults, soak, sweep,
report, eval) are in tests/test_bucket_runs.py.
"""

import errno
import json
import os
import types

from etils import epath
import pytest

from resnet_jax import cli
from resnet_jax.run import errors, metrics_log, storage, workdir as workdir_lib
from tests import gcs
from tests.helpers import small_config


def test_epath_reads_gs_through_gcsfs_even_with_tensorflow_installed(monkeypatch):
  pytest.importorskip("tensorflow")  # where it is absent, epath has no other choice to make
  from etils.epath import backend, gpath  # pylint: disable=g-import-not-at-top

  monkeypatch.delenv("EPATH_USE_TF", raising=False)
  # On its TensorFlow branch epath asks GCS's control plane whether the bucket is zonal (~9 s to
  # fail here, without credentials); the answer is not what this test is about.
  monkeypatch.setattr(gpath, "_is_zonal_gcs_bucket", lambda bucket: False)
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  try:
    path = gpath.PosixGPath("gs://bucket/run")
    assert path._backend is backend.tf_backend  # pylint: disable=protected-access  # epath's default
    assert storage.backend("gs://bucket/run").startswith("TensorFlow's gfile")
    storage.use_gcsfs()
    gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
    assert path._backend is backend.fsspec_backend  # pylint: disable=protected-access
    assert storage.backend("gs://bucket/run").startswith("gcsfs ")
  finally:
    gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


class _Flaky:
  """Raises the given errors in turn, then returns 'ok'."""

  def __init__(self, *raises):
    self.raises, self.calls = list(raises), 0

  def __call__(self):
    self.calls += 1
    if self.raises:
      raise self.raises.pop(0)
    return "ok"


def test_transient_errors_are_retried_with_exponential_backoff():
  import gcsfs.retry  # pylint: disable=g-import-not-at-top

  waits = []
  flaky = _Flaky(gcsfs.retry.HttpError({"code": 503, "message": "busy"}),
                 gcsfs.retry.HttpError({"code": 429, "message": "slow down"}),
                 ConnectionResetError(errno.ECONNRESET, "reset"), TimeoutError("read timed out"),
                 OSError("wrapped"))
  flaky.raises[-1].__cause__ = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
  assert storage.retrying("writing x", flaky, sleep=waits.append) == "ok" and flaky.calls == 6
  assert len(waits) == 5 and all(  # 1, 2, 4, 8, 16 s, each with up to 50% jitter
      lo <= w <= 1.5 * lo for w, lo in zip(waits, (1, 2, 4, 8, 16)))


@pytest.mark.parametrize("error", [
    FileNotFoundError("gs://bucket/x"), OSError(errno.ENOSPC, "No space left on device"),
    PermissionError(errno.EACCES, "Forbidden"), ValueError("a bug"), KeyError("a bug")])
def test_errors_that_a_retry_cannot_cure_pass_through_unchanged(error):
  flaky = _Flaky(error)
  with pytest.raises(type(error)) as raised:
    storage.retrying("writing x", flaky, sleep=lambda s: pytest.fail("slept"))
  assert raised.value is error and flaky.calls == 1


def test_a_fault_past_the_budget_is_storage_unavailable_exit_75():
  waits = []
  flaky = _Flaky(*[TimeoutError("timed out")] * 100)
  with pytest.raises(errors.StorageUnavailableError, match=r"^writing gs://b/metrics.jsonl failed "
                     r"\d+ times over .* nothing moved or deleted: re-run the same command") as e:
    storage.retrying("writing gs://b/metrics.jsonl", flaky, budget_s=60, sleep=waits.append,
                     clock=lambda: sum(waits))
  assert errors.exit_code(e.value) == errors.EXIT_STORAGE_UNAVAILABLE == 75
  assert not isinstance(e.value, OSError)  # never mistaken for a full or read-only disk
  assert 3 <= flaky.calls <= 7 and max(waits) <= 1.5 * storage.RETRY_MAX_DELAY_S


# --- Through the emulator, behind the fault-injecting proxy. ---


@pytest.fixture
def fast_gcsfs_retries(monkeypatch):
  """gcsfs's own waits between its 6 tries (1, 2, 4, 8, 16 s) cut to 10 ms: the same retries."""
  import asyncio  # pylint: disable=g-import-not-at-top
  import gcsfs.retry  # pylint: disable=g-import-not-at-top

  real_sleep = asyncio.sleep
  monkeypatch.setattr(gcsfs.retry, "asyncio", types.SimpleNamespace(
      sleep=lambda seconds: real_sleep(min(seconds, 0.01))))


def test_our_writes_survive_503_429_resets_and_stalls(gcs_url, monkeypatch, fast_gcsfs_retries):
  with gcs.FaultProxy(gcs_url, fraction=0.5, stall_s=0.5, max_faults=40, seed=1) as proxy:
    gcs.point_at(proxy.url, monkeypatch)
    root = f"gs://{gcs.BUCKET}/{os.getpid()}-ours"
    workdir_lib.check_writable(root)
    config = small_config()
    for start in (0, 2):
      workdir_lib.record_config(root, config, start)
    log = metrics_log.MetricsLog(root, start_step=0, tensorboard=True)
    log.write([{"step": s, "train/loss": 1.0 / s} for s in (1, 2, 3)])
    log.flush()
    log.close()
    storage.write_atomic(f"{root}/status.json", json.dumps({"status": "done"}))
    assert sum(proxy.counts.values()) >= 10, proxy.counts  # faults of every kind were met
    assert all(proxy.counts.values()), proxy.counts
  gcs.point_at(gcs_url, monkeypatch)  # read back without faults
  assert workdir_lib.read_config(root)["model"] == "resnet8"
  history = storage.read_text(f"{root}/{workdir_lib.HISTORY_FILE}").splitlines()
  assert [json.loads(line)["start_step"] for line in history] == [0, 2]
  assert [r["step"] for r in metrics_log.read_metrics(root)] == [1, 2, 3]
  assert json.loads(storage.read_text(f"{root}/status.json")) == {"status": "done"}


def test_a_lost_answer_to_the_probes_delete_is_not_an_unwritable_workdir(gcs_url, monkeypatch):
  # The DELETE happened, its answer was lost, gcsfs sent it again and GCS answered 404.
  with gcs.FaultProxy(gcs_url, fraction=1.0, kinds=("reset_after",), max_faults=1,
                      methods=("DELETE",)) as proxy:
    gcs.point_at(proxy.url, monkeypatch)
    workdir_lib.check_writable(f"gs://{gcs.BUCKET}/{os.getpid()}-probe")
  assert proxy.counts["reset_after"] == 1


def test_a_bucket_that_stays_away_ends_the_run_with_exit_75_and_changes_nothing(
    gcs_url, monkeypatch, capsys, fast_gcsfs_retries):
  root = f"gs://{gcs.BUCKET}/{os.getpid()}-away"
  gcs.point_at(gcs_url, monkeypatch)
  storage.write_atomic(f"{root}/config.json", "{}")  # a run was here
  before = sorted(p.name for p in epath.Path(root).iterdir())
  monkeypatch.setattr(storage, "RETRY_BUDGET_S", 2.0)
  with gcs.FaultProxy(gcs_url, fraction=1.0, kinds=("503",), max_faults=10**6) as proxy:
    gcs.point_at(proxy.url, monkeypatch)
    code = cli.main(["train", "--config", "configs/quickstart.py", "--workdir", root,
                     "--config.model=resnet8", "--config.total_steps=2", "--config.num_devices=1"])
  assert code == errors.EXIT_STORAGE_UNAVAILABLE
  err = capsys.readouterr().err
  assert f"{root} is read and written through gcsfs" in err
  last = err.strip().splitlines()[-1]
  assert last.startswith("resnet-jax train: error: ") and "nothing moved or deleted" in last
  assert "Traceback" not in err and proxy.counts["503"] >= 6
  gcs.point_at(gcs_url, monkeypatch)
  after = sorted(p.name for p in epath.Path(root).iterdir())
  assert after == before == ["config.json"]
