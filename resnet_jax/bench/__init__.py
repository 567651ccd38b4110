"""Benchmarks of the `resnet-jax` command.

What lives here: `step` (`resnet-jax bench`: the compiled train step on synthetic data), `data`
(`resnet-jax data-bench`: the input pipeline), `fake_imagenet` (an ILSVRC2012 layout of generated
JPEGs, or of given ones, that data-bench prepares and reads) and `photos` (JPEGs cut from real
photographs, for data-bench and benchmarks/input_pipeline.py).

What it may import: every subpackage below the command line. Reference implementations to compare against
(a minimal Flax step, PyTorch) live outside the package, in the repository's `benchmarks/`.
"""

from resnet_jax.bench.step import run_benchmark

__all__ = ["run_benchmark"]
