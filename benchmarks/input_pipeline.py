"""The ImageNet host pipeline per core: ours against tf.data (the Flax example's) and torchvision.

The same JPEGs cut from real photographs (`resnet_jax.bench.photos`: scikit-learn's two sample
photographs, windows of 300-500 px, quality 90) go through six pipelines, each in its own
subprocess pinned to one CPU core, so that "per core" means one core whatever a library's thread
pools would do:

  ours-train    what a training run's host does (resnet_jax.data.augment): JPEG decoded by
                libjpeg-turbo into NumPy (simplejpeg), inception crop (torchvision's rule), resize
                224 (PIL, antialiased bilinear), flip; uint8 out (the trainer normalises on the
                device)
  tf-train      the Flax ImageNet example's preprocess_for_train: sample_distorted_bounding_box,
                decode_and_crop_jpeg, resize 224 (bicubic), random flip, normalise; batched by tf.data
  torch-train   torchvision: PIL decode, RandomResizedCrop(224), RandomHorizontalFlip, ToTensor,
                Normalize; batched by torch.stack
  ours-eval     resize so that the centre 224 is 0.875 of the shorter side, centre crop 224; uint8
  tf-eval       the Flax example's preprocess_for_eval (decode_and_crop_jpeg of the padded centre,
                resize 224)
  torch-eval    Resize(256), CenterCrop(224), ToTensor, Normalize
  ours-train-host-norm  ours-train normalised on the host (float32 out): a dataset opened without
                normalize_on_device, as library users get it
  ours-train-pil  the pipeline before libjpeg-turbo and device normalisation: PIL decodes, the host
                normalises (float32 out)
  ours-train-dct  ours-train decoding at a reduced DCT scale where the crop allows (dct_scaling)
  ours-train-split  (only when named in --pipelines) ours-train-host-norm with its time split by
                where it is spent: JPEG decode and PIL resize (C code that releases the GIL), the normalisation's
                NumPy loops (large arrays: released too), and the rest, Python and the calls that
                keep the GIL (np.asarray of a PIL image among them): the serial part of each image
                when threads share one interpreter, for an Amdahl bound on threads per process

Each subprocess decodes every image once to warm up, then times `--passes` passes over the set in
batches. It reports images per CPU-second (process CPU time, all threads: the robust per-core
figure on a shared machine) and images per wall-second pinned to the core, and its peak RSS. The
pipelines run in turn, `--rounds` times (the order rotates each round), and the table gives the
median over rounds and each rate's ratio to tf.data's in the same round.

  python benchmarks/input_pipeline.py --images 256 --batch-size 64 --rounds 3
  python benchmarks/input_pipeline.py --images 256 --psnr   # reduced DCT scale against the exact path

Prints the CPU model and date, a markdown table, then one JSON line with every figure.
"""

import argparse
import datetime
import io
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
PIPELINES = ("ours-train", "tf-train", "torch-train", "ours-eval", "tf-eval", "torch-eval",
             "ours-train-host-norm", "ours-train-pil", "ours-train-dct")
SIZE = 224
# The Flax example's constants (examples/imagenet/input_pipeline.py): 0-255 pixel units.
MEAN_RGB = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STDDEV_RGB = [0.229 * 255, 0.224 * 255, 0.225 * 255]
CROP_PADDING = 32


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


# --- the pipelines: each returns a function batch(data: list[bytes], step: int) -> array ---------

def ours(train: bool, normalize: bool = False, pil: bool = False, dct_scaling: bool = False):
  from resnet_jax.data import augment as aug  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import decode  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import jpeg  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import sampling  # pylint: disable=g-import-not-at-top

  if pil:  # every image through PIL's decoder, as before libjpeg-turbo's
    jpeg.header = lambda data, channels: None
  normalizer = aug.Normalizer.torchvision()
  decode.keep_image_blocks()  # as TfdsDataset does
  augment = "inception" if train else "none"

  def batch(data, step):
    # The draws of global batch `step` of seed 0 on one process, as a run makes them.
    params = sampling.batch_plan(0, step, len(data), len(data), augment, shard=(1, 0))[1]
    # As TfdsDataset._images does: uint8 for the device to normalise, or normalised in one pass.
    return decode.decode_crops(data, augment, params, SIZE, 3, normalizer if normalize else None,
                            dct_scaling)

  return batch


def tf_flax(train: bool):
  """The Flax ImageNet example's input pipeline (examples/imagenet/input_pipeline.py), as written."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)

  def distorted_bounding_box_crop(image_bytes, bbox, min_object_covered=0.1,
                                  aspect_ratio_range=(0.75, 1.33), area_range=(0.05, 1.0),
                                  max_attempts=100):
    shape = tf.io.extract_jpeg_shape(image_bytes)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape, bounding_boxes=bbox, min_object_covered=min_object_covered,
        aspect_ratio_range=aspect_ratio_range, area_range=area_range, max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True)
    offset_y, offset_x, _ = tf.unstack(begin)
    target_height, target_width, _ = tf.unstack(size)
    crop_window = tf.stack([offset_y, offset_x, target_height, target_width])
    return tf.io.decode_and_crop_jpeg(image_bytes, crop_window, channels=3)

  def resize(image):
    return tf.image.resize([image], [SIZE, SIZE], method=tf.image.ResizeMethod.BICUBIC)[0]

  def at_least_x_are_equal(a, b, x):
    return tf.greater_equal(tf.reduce_sum(tf.cast(tf.equal(a, b), tf.int32)), x)

  def decode_and_center_crop(image_bytes):
    shape = tf.io.extract_jpeg_shape(image_bytes)
    h, w = shape[0], shape[1]
    side = tf.cast(((SIZE / (SIZE + CROP_PADDING)) * tf.cast(tf.minimum(h, w), tf.float32)),
                   tf.int32)
    window = tf.stack([((h - side) + 1) // 2, ((w - side) + 1) // 2, side, side])
    return resize(tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3))

  def decode_and_random_crop(image_bytes):
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32, shape=[1, 1, 4])
    image = distorted_bounding_box_crop(image_bytes, bbox, min_object_covered=0.1,
                                        aspect_ratio_range=(3. / 4, 4. / 3.),
                                        area_range=(0.08, 1.0), max_attempts=10)
    bad = at_least_x_are_equal(tf.io.extract_jpeg_shape(image_bytes), tf.shape(image), 3)
    return tf.cond(bad, lambda: decode_and_center_crop(image_bytes), lambda: resize(image))

  def normalize(image):
    image -= tf.constant(MEAN_RGB, shape=[1, 1, 3], dtype=image.dtype)
    image /= tf.constant(STDDEV_RGB, shape=[1, 1, 3], dtype=image.dtype)
    return image

  def preprocess(image_bytes):
    if train:
      image = tf.reshape(decode_and_random_crop(image_bytes), [SIZE, SIZE, 3])
      image = tf.image.random_flip_left_right(image)
    else:
      image = tf.reshape(decode_and_center_crop(image_bytes), [SIZE, SIZE, 3])
    return tf.image.convert_image_dtype(normalize(image), dtype=tf.float32)

  def batches(data, batch_size):  # one endless stream, built (and traced) once
    ds = tf.data.Dataset.from_tensor_slices(data).repeat()
    ds = ds.map(preprocess, num_parallel_calls=tf.data.experimental.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(10)
    return ds.as_numpy_iterator()

  return batches


def torchvision_pil(train: bool):
  import torch  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from torchvision import transforms  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(1)
  torch.manual_seed(0)
  norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
  if train:
    tf = transforms.Compose([transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), norm])
  else:
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(SIZE),
                             transforms.ToTensor(), norm])

  def batch(data, step):
    del step
    return torch.stack([tf(Image.open(io.BytesIO(d)).convert("RGB")) for d in data]).numpy()

  return batch


class GilSplit:
  """Thread CPU time spent in the calls that release the GIL, by patching them (ours-train-split).

  Counted as released: PIL's `ImageFile.load` (the JPEG decode), `Image.resize` less the load it
  triggers, and the normaliser's per-image write (NumPy ufunc loops over 150k values). Their own few
  Python lines are counted with them, so the held share is a slight underestimate on that side.
  """

  def __init__(self):
    from PIL import Image, ImageFile  # pylint: disable=g-import-not-at-top
    from resnet_jax.data import augment as aug  # pylint: disable=g-import-not-at-top
    from resnet_jax.data import jpeg  # pylint: disable=g-import-not-at-top

    self.seconds = {"decode": 0.0, "resize": 0.0, "normalise": 0.0}
    load, resize, rows_writer = ImageFile.ImageFile.load, Image.Image.resize, aug.Normalizer.rows_writer
    decode = jpeg.decode
    split = self

    def timed(fn):
      def call(*args, **kwargs):
        t = time.thread_time()
        try:
          return fn(*args, **kwargs)
        finally:
          split.seconds["decode"] += time.thread_time() - t
      return call

    timed_load = timed(load)

    def timed_resize(image, *args, **kwargs):
      t, before = time.thread_time(), split.seconds["decode"]
      try:
        return resize(image, *args, **kwargs)
      finally:
        split.seconds["resize"] += time.thread_time() - t - (split.seconds["decode"] - before)

    def timed_rows_writer(normalizer, *args, **kwargs):
      write = rows_writer(normalizer, *args, **kwargs)

      def timed_write(i, image):
        t = time.thread_time()
        write(i, image)
        split.seconds["normalise"] += time.thread_time() - t

      return timed_write

    ImageFile.ImageFile.load, Image.Image.resize = timed_load, timed_resize
    jpeg.decode = timed(decode)
    aug.Normalizer.rows_writer = timed_rows_writer


def dct_psnr(jpegs: list, batch_size: int, rounds: int) -> dict:
  """PSNR (dB, over all pixels of each view) of crops decoded at a reduced DCT scale against the
  exact path, and the share of images the scale reduced, for `rounds` epochs of training crops
  and the evaluation view."""
  from resnet_jax.data import decode, jpeg, sampling  # pylint: disable=g-import-not-at-top

  jpeg_decode, reduced = jpeg.decode, []

  def counting(data, channels, height, width, need=(0, 0)):
    out = jpeg_decode(data, channels, height, width, need)
    reduced.append(out is not None and out[1] < 1)
    return out

  jpeg.decode = counting
  out = {}
  for view, augment, epochs in (("train", "inception", rounds), ("eval", "none", 1)):
    sq_err, count, hits = 0.0, 0, []
    for step in range(epochs * len(jpegs) // batch_size):
      chunk = jpegs[(step * batch_size) % len(jpegs):][:batch_size]
      params = sampling.batch_plan(0, step, len(chunk), len(chunk), augment, shard=(1, 0))[1]
      exact = decode.decode_crops(chunk, augment, params, SIZE, 3).astype(float)
      reduced.clear()
      scaled = decode.decode_crops(chunk, augment, params, SIZE, 3, dct_scaling=True)
      hits += reduced
      sq_err += ((scaled - exact) ** 2).sum()
      count += exact.size
    mse = sq_err / count
    out[view] = {"psnr_db": 10 * math.log10(255 ** 2 / mse) if mse else math.inf,
                 "reduced_fraction": sum(hits) / max(len(hits), 1)}
  return out


def run_worker(name: str, path: str, batch_size: int, passes: int, cpu: int) -> dict:
  """Times pipeline `name` on the JPEGs in `path`, pinned to CPU `cpu`."""
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {cpu})
  with open(path, "rb") as f:
    data = json.load(f)
  data = [bytes.fromhex(d) for d in data]
  train = "train" in name
  kind = name.split("-")[0]
  steps = len(data) // batch_size
  chunks = [data[k * batch_size:(k + 1) * batch_size] for k in range(steps)]
  split = None
  if kind == "tf":
    stream = tf_flax(train)(data, batch_size)
    epoch = lambda p: (next(stream) for _ in range(steps))
  else:
    split = GilSplit() if name == "ours-train-split" else None
    fn = (ours(train, normalize=name in ("ours-train-host-norm", "ours-train-pil", "ours-train-split"),
               pil=name == "ours-train-pil", dct_scaling=name == "ours-train-dct")
          if kind == "ours" else torchvision_pil(train))
    epoch = lambda p: (fn(c, p * steps + k) for k, c in enumerate(chunks))
  shape = None
  for b in epoch(0):  # warm-up: every image once (imports, thread pools, caches)
    shape = b.shape
  if split:
    split.seconds = dict.fromkeys(split.seconds, 0.0)
  t, c, th = time.perf_counter(), time.process_time(), time.thread_time()
  count = 0
  for p in range(1, passes + 1):
    for b in epoch(p):
      count += len(b)
  wall, cpu_s, thread_s = (time.perf_counter() - t, time.process_time() - c,
                           time.thread_time() - th)
  row = {"pipeline": name, "images": count, "wall_s": wall, "cpu_s": cpu_s,
         "images_per_cpu_s": count / cpu_s, "images_per_s_pinned": count / wall,
         "batch_shape": list(shape), "peak_rss_mib": resource.getrusage(
             resource.RUSAGE_SELF).ru_maxrss / 1024}
  if split:  # ms per image in the calling thread, by where it went
    ms = {k: 1e3 * v / count for k, v in split.seconds.items()}
    ms["gil_held"] = 1e3 * thread_s / count - sum(ms.values())
    row["ms_per_image"] = ms
    row["gil_held_fraction"] = ms["gil_held"] / (1e3 * thread_s / count)
  return row


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=256, help="JPEGs in the set")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--passes", type=int, default=2, help="timed passes over the set per run")
  parser.add_argument("--rounds", type=int, default=3, help="alternations of all pipelines")
  parser.add_argument("--pipelines", default=",".join(PIPELINES))
  parser.add_argument("--cpu", type=int, default=-1, help="core to pin to (-1: the last allowed)")
  parser.add_argument("--psnr", action="store_true",
                      help="only compare the reduced-DCT-scale decode with the exact path: PSNR")
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
  parser.add_argument("--jpegs", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
  cpu = allowed[args.cpu] if args.cpu < 0 else args.cpu
  if args.worker:
    print(json.dumps(run_worker(args.worker, args.jpegs, args.batch_size, args.passes, cpu)))
    return 0

  from resnet_jax.bench.photos import photo_jpegs  # pylint: disable=g-import-not-at-top

  names = [n for n in args.pipelines.split(",") if n]
  if args.images < args.batch_size or any(n not in PIPELINES + ("ours-train-split",) for n in names):
    parser.error(f"--images must be >= --batch-size; --pipelines from {', '.join(PIPELINES)}, "
                 "ours-train-split")
  jpegs = photo_jpegs(args.images)
  when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  print(f"{cpu_model()}; pinned to core {cpu} of {os.cpu_count()}; {when}; {len(jpegs)} JPEGs, "
        f"mean {sum(map(len, jpegs)) / len(jpegs) / 1024:.1f} KiB", flush=True)
  if args.psnr:
    print(json.dumps(dct_psnr(jpegs, args.batch_size, args.rounds)))
    return 0
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p))
  results = {n: [] for n in names}
  with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump([j.hex() for j in jpegs], f)
  try:
    for r in range(args.rounds):
      for name in names[r % len(names):] + names[:r % len(names)]:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--jpegs", f.name,
               "--batch-size", str(args.batch_size), "--passes", str(args.passes),
               "--cpu", str(cpu)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode:
          print(f"{name} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
          return 1
        row = json.loads(out.stdout.strip().splitlines()[-1])
        results[name].append(row)
        print(f"  round {r + 1} {name}: {row['images_per_cpu_s']:.0f} images/CPU-s, "
              f"{row['images_per_s_pinned']:.0f} images/s pinned", flush=True)
        if "ms_per_image" in row:
          print("    ms per image: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                 row["ms_per_image"].items())
                + f"; GIL held {row['gil_held_fraction']:.1%} of the thread's time", flush=True)
  finally:
    os.unlink(f.name)

  def ratio(name, key, r):
    ref = results.get("tf-" + name.split("-")[1])
    return results[name][r][key] / ref[r][key] if ref else None

  summary = {}
  print("\n| pipeline | images/s per core (CPU time) | pinned images/s | vs tf.data (per round) "
        "| peak RSS MiB |\n|---|---|---|---|---|")
  for name, rows in results.items():
    ratios = [ratio(name, "images_per_cpu_s", r) for r in range(len(rows))]
    s = {"images_per_cpu_s": statistics.median(x["images_per_cpu_s"] for x in rows),
         "images_per_s_pinned": statistics.median(x["images_per_s_pinned"] for x in rows),
         "ratio_to_tf": statistics.median(ratios) if None not in ratios else None,
         "ratios_to_tf": ratios, "peak_rss_mib": max(x["peak_rss_mib"] for x in rows),
         "rounds": rows}
    if "gil_held_fraction" in rows[0]:
      s["gil_held_fraction"] = statistics.median(x["gil_held_fraction"] for x in rows)
      s["ms_per_image"] = {k: statistics.median(x["ms_per_image"][k] for x in rows)
                           for k in rows[0]["ms_per_image"]}
    summary[name] = s
    shown = ", ".join(f"{x:.2f}" for x in ratios) if None not in ratios else "n/a"
    print(f"| {name} | {s['images_per_cpu_s']:.0f} | {s['images_per_s_pinned']:.0f} | {shown} | "
          f"{s['peak_rss_mib']:.0f} |")
  print(json.dumps({"cpu": cpu_model(), "date": when, "images": args.images,
                    "batch_size": args.batch_size, "passes": args.passes, "rounds": args.rounds,
                    "pipelines": summary}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
