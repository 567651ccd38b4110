"""Targets we compile for without having them: TPU slices and GPU machines.

What lives here: `chips` (Cloud TPU slices by name, libtpu's topology for each, and each chip's
published figures with their sources), `gpu` (GPU machines by name and machine type, each GPU's
published figures with their sources, and the target configuration the CUDA plugin compiles for),
`analysis` (a compiled program's memory, FLOPs, bytes and collectives, and the roofline estimate of
its step), `devices` (the targets by name and their compile-only devices), `compile` (`resnet-jax
compile`: the step a run would compile, compiled for those devices) and `max_batch` (`--max-batch`:
the largest per-chip batch that fits, found by compiling). `chips` and `gpu` import no JAX: the
command line reads them before it sets the environment JAX starts in.

What it may import: every subpackage below the command line (`training` builds the step, as a run does).
"""
