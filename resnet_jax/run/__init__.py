"""Run infrastructure: what every command needs around the work itself.

What lives here: `errors` (the kinds of error and their exit codes: a user's mistake is one
sentence and exit 2, anything unexpected a traceback), `console` (phase lines and the progress bar),
`workdir` (the one-writer lock, writability with the reason why not, config.json and its history),
`metrics_log` (metrics.jsonl that survives any crash) and `tensorboard` (scalar event files),
`storage` (local or gs:// paths through etils.epath and gcsfs, each bucket read and write retried
on transient errors), `distributed` (joining the processes of a multi-host run), `extras` (the
packages a command needs, checked before it starts) and `process` (the command's process set-up:
huge pages, the persistent compilation cache).

What it may import: the standard library, etils, and JAX (lazily, where a function needs it);
nothing of resnet_jax but `checks`. Every other subpackage may import it: the CLI, sweeps, reports and data
preparation do so without reaching into training/.
"""
