"""Targets we compile for without having them: TPU slices (and the GPU platform's lowering).

What lives here: `chips` (Cloud TPU slices by name, libtpu's topology for each, and each chip's
published figures with their sources), `analysis` (a compiled program's memory, FLOPs, bytes and
collectives, and the roofline estimate of its step), `compile` (`resnet-jax compile`: the step a run
would compile, compiled for a slice's compile-only devices) and `gpu` (the step lowered for CUDA).

What it may import: every subpackage below the command line (`training` builds the step, as a run does).
"""
