"""Experiments: sweeps of runs, their result tables and the paper's figures, analyses of checkpoints.

What lives here: `sweep` (a grid of runs from a sweep file, each member resumable), `curves` (training
and test error curves from metrics rows), `report` (summary.csv and summary.md, Table 6 beside ours),
`plots` (Fig. 1/6 curves, per-block gradient norms, Fig. 7 responses) and `responses` (Fig. 7's layer
response statistics from a checkpoint).

What it may import: every layer below it (`run`, `config`, `data`, `models`, `training`); only `cli` imports
it.
"""
