"""Training: the pure step, the optimizer, data parallelism, the one loop, checkpoints.

What lives here, in data-flow order: `validation` (every config key checked once, before any I/O),
`step` (TrainState, `train_step(state, batch) -> (state, metrics)`, `eval_step`: pure, no I/O),
`optim` (the learning-rate schedule and one `optax.chain`), `parallel` (the step bound one way and
compiled with `jax.jit` over a device mesh or with `jax.pmap`; `xla_cpu`: what XLA:CPU needs of
the compiled steps), `group_step` (the same step vmapped over the members of a vectorised group;
its rules in `grouping`, their memory in `memory`),
`trainer` (everything a run builds from its config; `restore` a run from its workdir), `init_from`
(a fine-tuning run seeded from another's checkpoint), `cadence` (which steps log, evaluate,
checkpoint), `lifecycle` (a run's workdir while it trains, and how it stops), `loop` (the one
training loop, for a solo run and a vectorised group alike; `rows`: the metrics rows of its fetched
steps), `goodput` (achieved FLOP/s, share of peak, input wait, goodput) and `checkpoints` (Orbax).

What it may import: `models`, `data`, `config`, `run` and `checks`, and the devices' published
figures (`targets.chips`, `targets.gpu`: they import nothing); never `experiments` or `cli`.
`step` imports nothing from the loop.
"""
