"""Our TensorBoard event files: the TFRecord framing, the Event messages TensorBoard reads, resumed
runs, and a training process that never imports torch or TensorFlow for them."""

import os
import subprocess
import sys

from tensorboard.backend.event_processing import event_file_loader

from resnet_jax.run import tensorboard

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_crc32c_is_castagnolis():
  # The check value of CRC-32C (RFC 3720, appendix B.4) and of the empty input.
  assert tensorboard.crc32c(b"123456789") == 0xE3069283
  assert tensorboard.crc32c(b"") == 0


def _events(logdir):
  (name,) = os.listdir(logdir)
  assert name.startswith("events.out.tfevents.")
  return list(event_file_loader.EventFileLoader(os.path.join(logdir, name)).Load())


def test_tensorboard_reads_every_scalar_of_every_step(tmp_path):
  writer = tensorboard.EventWriter(str(tmp_path), purge_step=5)
  writer.write(5, {"train/loss": 2.5, "eval/accuracy": 0.125})
  writer.write(6, {"train/loss": 1.25})
  writer.close()
  events = _events(tmp_path)
  assert events[0].file_version == "brain.Event:2"
  # A resumed run's first record: TensorBoard drops older events from step 5 on.
  assert events[1].step == 5 and events[1].session_log.status == events[1].session_log.START
  got = {(e.step, v.tag): v.tensor.float_val[0] for e in events[2:] for v in e.summary.value}
  assert got == {(5, "train/loss"): 2.5, (5, "eval/accuracy"): 0.125, (6, "train/loss"): 1.25}


def test_a_torn_record_is_detected_by_its_checksum():
  data = tensorboard.event(3, 0.0, scalars={"x": 1.0})
  framed = bytearray(tensorboard.record(data))
  framed[-5] ^= 1  # one bit of the payload
  # The payload's masked CRC (the record's last 4 bytes) no longer matches.
  assert tensorboard.record(bytes(framed[12:-4]))[-4:] != bytes(framed[-4:])


def test_metrics_logging_imports_neither_torch_nor_tensorflow(tmp_path):
  code = ("import sys; from resnet_jax.run import metrics_log; "
          f"log = metrics_log.MetricsLog({str(tmp_path)!r}, 0); log.write([{{'step': 1, 'x': 1.0}}]); "
          "log.close(); bad = [m for m in ('torch', 'tensorflow', 'tensorboardX') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
  assert os.listdir(tmp_path / "tensorboard")
