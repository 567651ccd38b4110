"""`resnet-jax data-bench`: images/s of the input pipeline (read, decode, augment, normalise).

Times `train_batch` for consecutive steps, the calls the training loop makes, once per thread count:
0 threads is one core doing everything in the caller (so its rate is images/s/core), more threads
build batches ahead in Grain threads. Peak RSS is the process's high-water mark (it includes JAX and
the dataset's index, not TensorFlow: building a dataset runs in a child process).
"""

import concurrent.futures
import multiprocessing
import os
import resource
import tempfile
import time

from resnet_jax.config import default_config
from resnet_jax.run.errors import ConfigError
from resnet_jax.training import derived, validation

FAKE_IMAGENET = "fake-imagenet"  # ImageNet-style JPEGs generated here, prepared as imagenet2012
PHOTOS = "photos"  # JPEGs cut from real photographs (bench.photos), prepared as imagenet2012


def _prepare_fake_imagenet(root: str, images: int, photos: bool = False) -> str:
  from resnet_jax.bench import fake_imagenet  # pylint: disable=g-import-not-at-top
  from resnet_jax.bench import photos as photos_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import prepare  # pylint: disable=g-import-not-at-top

  manual = os.path.join(root, "manual")
  synsets = ("n01440764", "n01443537")
  per_class = images // len(synsets)
  jpegs = photos_lib.photo_jpegs(per_class * len(synsets) + 8) if photos else None
  fake_imagenet.write_fake_imagenet(manual, synsets, per_class=per_class, num_val=8,
                              min_side=300, max_side=500, jpegs=jpegs)
  data_dir = os.path.join(root, "data")
  prepare.prepare("imagenet2012", manual, data_dir)
  return data_dir


def run_data_bench(data: str, data_dir: str = "", augment: str = "", batch_size: int = 128,
                   steps: int = 20, threads=(0, 2), image_size: int = 0,
                   fake_images: int = 256, workers=()) -> dict:
  """Images/s of `train_batch` for each thread count in `threads`, then for each count of worker
  processes in `workers` (`data_workers`), after one warm-up batch each.

  `data` is a TFDS name prepared in `data_dir`, "photos" (`fake_images` JPEGs cut from real
  photographs, `bench.photos`) or "fake-imagenet" (`fake_images` generated JPEGs of flat 8x8 blocks),
  both 300-500 px (ImageNet's typical size) and prepared as imagenet2012 in a temporary directory.
  """
  from resnet_jax.data import tfds_source  # pylint: disable=g-import-not-at-top

  if (steps < 1 or batch_size < 1 or not (threads or workers)
      or min(threads + tuple(workers)) < 0):
    raise ConfigError("data-bench needs --steps >= 1, --batch-size >= 1 and at least one --threads "
                      "or --workers count, each >= 0.")
  with tempfile.TemporaryDirectory(prefix="resnet_jax_data_bench_") as tmp:
    name = data
    if data in (FAKE_IMAGENET, PHOTOS):
      name = "imagenet2012"
      # TensorFlow (which builds TFDS datasets) stays out of this process and its peak RSS.
      ctx = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        data_dir = pool.submit(_prepare_fake_imagenet, tmp, fake_images, data == PHOTOS).result()
    augment = augment or ("inception" if name.startswith("imagenet") else "cifar")
    rows = []
    for num_threads, num_workers in [(t, 0) for t in threads] + [(0, w) for w in workers if w]:
      # Statistics from 256 images: their values do not change the cost of a batch.
      config = default_config()
      parallel = max(num_threads, num_workers)
      config.update(dataset=name, data_dir=data_dir, augment=augment, image_size=image_size,
                    normalization_examples=256, data_threads=num_threads, data_workers=num_workers,
                    prefetch_batches=max(2, 2 * parallel), batch_size=batch_size,
                    eval_batch_size=batch_size, model="resnet50", num_devices=1)
      validation.validate(config)  # the checks a run makes of these keys
      # What a training run's host does: variable-size images stay uint8 (normalised on the device).
      ds = tfds_source.TfdsDataset.from_config(config, derived.image_size(config),
                                               check=validation.metadata_check(config),
                                               normalize_on_device=True)
      ds.train_batch(0, 0, batch_size)  # warm-up: opens files, starts the threads
      t = time.perf_counter()
      for step in range(1, steps + 1):
        batch = ds.train_batch(0, step, batch_size)
      seconds = time.perf_counter() - t
      rows.append({"threads": num_threads, "workers": num_workers,
                   "images_per_sec": steps * batch_size / seconds})
      ds.close()
      del ds
  single = [r["images_per_sec"] for r in rows if r["threads"] == 0 and r["workers"] == 0]
  return {
      "data": data, "augment": augment, "batch_size": batch_size, "steps": steps,
      "image_shape": list(batch["image"].shape[1:]), "cpu_cores": os.cpu_count(),
      "rows": rows, "images_per_sec_per_core": single[0] if single else None,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }
