"""Every preset and sweep member runs unchanged on 1, 4, 8 and 16 devices (one or several hosts).

The machines the presets are for have 8 accelerators (a v3-8, v5e-8 or 8-GPU VM) or several hosts of
4; a preset that validates on the 2-core machine it was written on but stops on those is a broken
promise. Validation needs only the devices' count and processes, so fake devices stand in for them.
"""

import dataclasses
import glob
import itertools
import os

import jax
import numpy as np
import pytest

from resnet_jax import config as config_lib
from resnet_jax.experiments import sweep
from resnet_jax.models import CIFAR_DEPTHS
from resnet_jax.run.errors import ConfigError
from resnet_jax.training import derived, validation
from resnet_jax.training.trainer import Trainer
from tests.helpers import small_config

IMAGENET_NETS = [f"{k}{d}" for k in ("resnet", "plain") for d in (18, 34, 50, 101, 152)]
PRESETS = (
    [f"configs/cifar10.py:{k}{d}" for k in ("resnet", "plain") for d in CIFAR_DEPTHS]
    + [f"configs/cifar10_fast.py:{m}" for m in ("resnet20", "resnet56", "resnet110")]
    + [f"configs/imagenet.py:{m}" for m in IMAGENET_NETS]
    + [f"configs/imagenet.py:{m}-modern" for m in IMAGENET_NETS]
    + [f"configs/imagenet.py:resnet{d}-{x}" for d in (18, 34, 50) for x in "ABC"]
    + ["configs/quickstart.py", "configs/default.py", "configs/finetune.py",
       "configs/finetune.py:linear"])
SWEEPS = ["configs/sweeps/degradation_cifar10.py", "configs/sweeps/degradation_digits.py",
          "configs/sweeps/seeds_digits.py", "configs/sweeps/table6.py"]
# (devices, processes): one host of 1, 4 or 8 devices; 16 devices on one host or on 4 hosts of 4.
MACHINES = [(1, 1), (4, 1), (8, 1), (16, 1), (16, 4)]


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  id: int
  process_index: int
  platform: str = "tpu"


def devices(count: int, processes: int) -> list:
  return [FakeDevice(i, i * processes // count) for i in range(count)]


def configs():
  for spec in PRESETS:
    yield spec, config_lib.load(spec)
  for spec in SWEEPS:
    for member in sweep.load_members(spec):
      yield f"{spec} [{member.name}]", member.config


def check(config, count: int, processes: int) -> None:
  if config.init_from == "" and (config.freeze_bn_stats or config.freeze_backbone):
    config.unlock()
    config.init_from = "runs/pretrained"  # the fine-tuning presets ask the user for one
  machine = devices(count, processes)
  validation.validate(config, machine)
  facts = derived.derive(config, machine)
  # Every device and host holds an equal share of each batch, and evaluation still covers the
  # requested number of images per batch (padding only adds masked examples).
  assert facts.batch_size % count == 0 and facts.batch_size % processes == 0
  assert facts.eval_batch_size % count == 0 and facts.eval_batch_size % processes == 0
  assert config.eval_batch_size <= facts.eval_batch_size < config.eval_batch_size + count


ALL = list(configs())


@pytest.mark.parametrize("count,processes", MACHINES)
def test_every_preset_validates_on_common_machines(count, processes):
  failures = []
  for name, config in ALL:
    try:
      check(config.copy_and_resolve_references(), count, processes)
    except Exception as e:  # pylint: disable=broad-except  # collect every preset's failure
      failures.append(f"{name}: {type(e).__name__}: {e}")
  assert not failures, "\n".join(failures)


def test_presets_cover_every_config_file():
  """A new preset file must join the list above (or this test says which)."""
  root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
  files = {os.path.relpath(p, os.path.dirname(root)) for p in glob.glob(f"{root}/**/*.py", recursive=True)
           if not p.endswith("__init__.py")}
  listed = {s.partition(":")[0] for s in PRESETS + SWEEPS}
  assert files == listed


def test_eval_batch_is_padded_not_refused():
  assert derived.eval_batch_size(100, 8, 1) == 104
  assert derived.eval_batch_size(500, 16, 4) == 512
  assert derived.eval_batch_size(128, 8, 2) == 128
  with pytest.raises(ConfigError, match="batch_size=100 must be divisible"):
    validation.validate(small_config(batch_size=100, num_devices=0), devices(8, 1))


def test_padded_eval_batch_gives_the_same_metrics():
  """ResNet-8 on digits' 300 test images: 100 per batch on 8 devices (padded to 104, the last batch
  masked) scores exactly what one batch of all 300 on one device does."""
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 simulated devices")
  one = Trainer(small_config(eval_batch_size=300))
  eight = Trainer(small_config(eval_batch_size=100, num_devices=8))
  assert eight.derived.eval_batch_size == 104
  state = one.init_state()
  (a,) = one.evaluate(one.strategy.put_state(state))
  (b,) = eight.evaluate(eight.strategy.put_state(state))
  np.testing.assert_allclose(b["eval/accuracy"], a["eval/accuracy"], rtol=0, atol=1e-7)
  np.testing.assert_allclose(b["eval/loss"], a["eval/loss"], rtol=1e-5)
  assert list(itertools.islice(eight.dataset.eval_batches(104), 3))[-1]["mask"].sum() == 300 - 208


def test_a_runs_facts_are_derived_once_and_read_by_every_layer():
  """Derived holds the batch each device sees, the crop side, the test view's layout and, once the
  data is known, its image shape and classes; the trainer shapes its evaluation step from them."""
  config = small_config(dataset="imagenet2012", model="resnet8", image_size=48, batch_size=64,
                        eval_batch_size=6, eval_crops="multiscale", eval_scales=(32, 40),
                        num_devices=0)
  facts = derived.derive(config, devices(8, 2))
  assert (facts.device_batch_size, facts.image_size, facts.eval_batch_size) == (8, 48, 8)
  assert facts.eval_layout.image_shapes(8, (48, 48, 3)) == ((8, 32, 32, 3), (8, 40, 40, 3))
  spec = derived.data_spec(config)
  assert (facts.with_data(spec).image_shape, facts.with_data(spec).num_classes) == ((48, 48, 3), 1000)
  ten = small_config(dataset="imagenet2012", model="resnet8", image_size=48, eval_crops="ten",
                     eval_batch_size=6, num_devices=1)
  trainer = Trainer(ten, data=derived.data_spec(ten))
  assert (trainer.derived.image_shape, trainer.num_classes) == ((48, 48, 3), 1000)
  assert trainer.abstract_eval_batch()["image"].shape == (6, 10, 48, 48, 3)
  # The evaluation step was bound for that layout: it lowers for those shapes (a one-view step
  # would hand the network 5-D images).
  trainer.strategy.eval_step.lower(trainer.abstract_state(), trainer.abstract_eval_batch())
