"""Training: the pure step, the optimizer, data parallelism, the loop, checkpoints and metrics.

What lives here, in data-flow order: `step` (TrainState, `train_step(state, batch) -> (state,
metrics)`, `eval_step`: pure, no I/O), `optim` (the learning-rate schedule and one `optax.chain`),
`parallel` (the step compiled with `jax.jit` over a device mesh, or `jax.pmap`), `trainer` (data,
model, optimizer and compiled steps for one config; `restore` a run from its workdir), `loop`
(`train_and_evaluate`: resume, dispatch, log, evaluate, checkpoint), `vectorized` (sweep members
that differ only in seed and optimizer values, trained together by one vmapped step; its rules in
`grouping`, its compiled step in `group_step`), `memory` (a compiled step's memory per device, and
how many group members fit), `checkpoints` (Orbax),
`metrics_log` (metrics.jsonl, TensorBoard, the console) and `distributed` (multi-process start-up).

What it may import: `models`, `data`, `config`, `checks`, `storage`; never `experiments` or `cli`.
`step` imports nothing from the loop.
"""
