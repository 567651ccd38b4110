"""Vectorised sweep members (loop.train_group; grouping, group_step): one vmapped step, ordinary runs.

The specification is the solo run: every member of a group must log the metrics and end with the
parameters its own `train_and_evaluate` gives. They are compared to a tolerance set by float
reduction order (vmap batches the convolutions, so XLA may sum in another order): rtol 1e-3 on
metrics, 1e-2 on the per-block gradient norms, 5e-4 (absolute) on BN statistics, and 3e-5 of their
norm on the parameters after 6 steps. Members agree to ~3e-7 step after step, but a block's gradient
norm can jump to ~1e-3 in one step when a single ReLU input near 0 lands on the other side under the
other summation order (seen at step 6 of the third member, lr 0.2 with momentum 0.95), which moves a
few parameters by up to 4e-5: 1e-5 of the parameters' norm (1 and 8 devices). A mix-up of the
members' values moves every parameter a little: a weight decay 1e-4 higher moves none by as much as
2.5e-4 (under the 5e-4 absolute tolerance this test had), and the smallest mix-up of MEMBERS, the
first member trained with the third's weight decay (0 for 1e-4), moves the metrics by ~1e-3, at the
edge of their tolerance, but the parameters by 2e-4 of their norm. So the parameters are compared by
norm, and the test trains that mix-up to show the comparison fails for it.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from resnet_jax import cli
from resnet_jax.data import readahead
from resnet_jax.experiments import sweep
from resnet_jax.run import metrics_log
from resnet_jax.run.errors import ConfigError, NonFiniteError
from resnet_jax.training import grouping, loop, memory
from resnet_jax.training.trainer import restore
from tests.helpers import max_abs_diff, small_config

RTOL, BLOCK_RTOL, BN_ATOL, PARAM_RTOL = 1e-3, 1e-2, 5e-4, 3e-5
# Three members differing in every key a group may vary.
MEMBERS = [dict(seed=0, learning_rate=0.1, weight_decay=1e-4, momentum=0.9, label_smoothing=0.0),
           dict(seed=1, learning_rate=0.05, weight_decay=5e-4, momentum=0.8, label_smoothing=0.1),
           dict(seed=2, learning_rate=0.2, weight_decay=0.0, momentum=0.95, label_smoothing=0.0)]


def _configs(members=MEMBERS, **common):
  base = dict(eval_every_steps=3, checkpoint_every_steps=3, log_every_steps=3)
  base.update(common)
  return [small_config(**base, **m) for m in members]


def _train_rows(workdir):
  return [{k: v for k, v in r.items() if not k.startswith("perf/")}
          for r in metrics_log.read_metrics(workdir)]


def _assert_same_run(solo_dir, member_dir):
  _assert_same_metrics(solo_dir, member_dir)
  _assert_same_state(solo_dir, member_dir)


def _assert_same_metrics(solo_dir, member_dir):
  solo, member = _train_rows(solo_dir), _train_rows(member_dir)
  assert [r["step"] for r in solo] == [r["step"] for r in member]
  assert set(solo[-1]) == set(member[-1])  # the same keys, eval included
  for a, b in zip(solo, member):
    for key in a:
      rtol = BLOCK_RTOL if key.startswith("grad_norm/") else RTOL
      np.testing.assert_allclose(b[key], a[key], rtol=rtol, atol=1e-6, err_msg=f"{key} step {a['step']}")


def _assert_same_state(solo_dir, member_dir):
  _, solo_state = restore(solo_dir, num_devices=1)
  _, member_state = restore(member_dir, num_devices=1)  # an ordinary run's checkpoint
  assert int(member_state.step) == int(solo_state.step)
  moved = _norm(jax.tree_util.tree_map(np.subtract, member_state.params, solo_state.params))
  assert moved < PARAM_RTOL * _norm(solo_state.params), f"the parameters differ by {moved:.3g}"
  assert max_abs_diff(solo_state.batch_stats, member_state.batch_stats) < BN_ATOL


def _norm(tree) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                           for x in jax.tree_util.tree_leaves(tree))))


@pytest.mark.parametrize("num_devices", [1, pytest.param(8, marks=pytest.mark.e2e)])
def test_each_member_equals_its_solo_run(tmp_path, num_devices):
  configs = _configs(num_devices=num_devices)
  group_dirs = [str(tmp_path / f"group{i}") for i in range(len(configs))]
  errors = loop.train_group(configs, group_dirs)
  assert errors == [None] * len(configs)
  for i, config in enumerate(configs):
    solo_dir = str(tmp_path / f"solo{i}")
    loop.train_and_evaluate(config, solo_dir)
    _assert_same_run(solo_dir, group_dirs[i])
    # Each member's workdir is a whole run: what reports and resumes read.
    for name in ("config.json", "config_history.jsonl", "model.json", "metrics.jsonl"):
      assert os.path.exists(os.path.join(group_dirs[i], name)), name
  # The members really differ (a group that trained one member M times would pass the checks above
  # only if the solo runs were equal too).
  losses = [_train_rows(d)[-1]["train/loss"] for d in group_dirs]
  assert len({round(x, 4) for x in losses}) == len(losses)
  # The control: the smallest mix-up of the members' values fails the comparison, for its reason.
  mixed = _configs([dict(MEMBERS[0], weight_decay=MEMBERS[2]["weight_decay"])],
                   num_devices=num_devices)[0]
  loop.train_and_evaluate(mixed, str(tmp_path / "mixed"))
  with pytest.raises(AssertionError, match="the parameters differ"):
    _assert_same_state(str(tmp_path / "solo0"), str(tmp_path / "mixed"))


def test_on_device_data_and_several_steps_per_dispatch_match_solo(tmp_path):
  configs = _configs(MEMBERS[:2], data_on_device=True, steps_per_dispatch=3, augment="cifar",
                     num_devices=1)
  group_dirs = [str(tmp_path / f"group{i}") for i in range(2)]
  assert loop.train_group(configs, group_dirs) == [None, None]
  for i, config in enumerate(configs):
    loop.train_and_evaluate(config, str(tmp_path / f"solo{i}"))
    _assert_same_run(str(tmp_path / f"solo{i}"), group_dirs[i])


def test_a_diverging_member_fails_alone(tmp_path):
  configs = _configs([MEMBERS[0], dict(MEMBERS[1], learning_rate=1e30)], num_devices=1,
                     eval_every_steps=0)
  dirs = [str(tmp_path / "ok"), str(tmp_path / "diverges")]
  seen = []
  errors = loop.train_group(configs, dirs, on_done=lambda i, e: seen.append((i, e)))
  assert errors[0] is None and isinstance(errors[1], NonFiniteError)
  assert "non-finite" in str(errors[1])
  assert [i for i, _ in seen] == [0, 1]
  assert _train_rows(dirs[0])[-1]["step"] == 6
  bad = _train_rows(dirs[1])
  assert all(np.isfinite(r["train/loss"]) for r in bad)  # nothing non-finite was logged
  assert not bad or bad[-1]["step"] < 6


def test_members_behind_catch_up_and_the_group_equals_an_uninterrupted_one(tmp_path):
  """A crash between two members' saves leaves them at different steps; the resumed group first
  trains the ones behind, then all together, and ends where an uninterrupted group ends."""
  configs = _configs(MEMBERS[:2], num_devices=1, eval_every_steps=0, checkpoint_every_steps=2,
                     log_every_steps=2)
  reference = [str(tmp_path / f"ref{i}") for i in range(2)]
  assert loop.train_group(configs, reference) == [None, None]

  dirs = [str(tmp_path / f"run{i}") for i in range(2)]
  short = [c.copy_and_resolve_references() for c in configs]
  for c in short:
    c.total_steps = 2
  assert loop.train_group(short, dirs) == [None, None]
  ahead = configs[0].copy_and_resolve_references()
  ahead.total_steps = 4
  loop.train_and_evaluate(ahead, dirs[0])  # member 0 alone to step 4; member 1 stays at 2
  messages = []
  assert loop.train_group(configs, dirs, say=messages.append) == [None, None]
  assert any("catching up" in m for m in messages), messages
  for ref, run in zip(reference, dirs):
    a, b = _train_rows(ref), _train_rows(run)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
      np.testing.assert_allclose(y["train/loss"], x["train/loss"], rtol=RTOL)


def test_check_group_names_the_key_that_differs_and_pmap_is_refused():
  a, b = _configs(MEMBERS[:2])
  b.batch_size = 64
  with pytest.raises(ConfigError, match=r"differ in batch_size \(32 vs 64\)"):
    grouping.check_group([a, b])
  b.batch_size, b.parallelism = 32, "pmap"
  with pytest.raises(ConfigError, match="parallelism='jit'"):
    grouping.check_group([a, b])
  assert grouping.unsupported(a) is None


def test_plan_groups_is_deterministic_and_keeps_incompatible_members_apart():
  c = _configs(MEMBERS)  # three compatible
  other = small_config(batch_size=64)
  pmap = small_config(parallelism="pmap")
  configs = [c[0], other, c[1], pmap, c[2]]
  assert grouping.plan_groups(configs) == [[0, 2, 4], [1], [3]]
  assert grouping.plan_groups(configs, wanted=[True, True, False, True, True]) == [[0, 4], [1], [2], [3]]


def test_memory_estimate_caps_members_per_group(monkeypatch):
  config = _configs(MEMBERS[:1], num_devices=1)[0]
  trainer = loop.Trainer(config)
  # XLA's estimate of one member's compiled step, against the host memory a CPU device shares.
  assert 1 <= memory.members_that_fit(trainer) < 10**6
  seen = []
  monkeypatch.setattr(memory, "step_memory", lambda compiled: seen.append(compiled) or {"peak": 1000})
  monkeypatch.setattr(memory, "device_memory_bytes", lambda device: 5000)
  assert memory.members_that_fit(trainer) == 4  # 80% of 5000 bytes, 1000 per member
  assert hasattr(seen[0], "memory_analysis")  # it measured a compiled step
  monkeypatch.setattr(memory, "device_memory_bytes", lambda device: 900)
  assert memory.members_that_fit(trainer) == 1  # never fewer than one


def test_chunks_of_vectorize_max_members(tmp_path):
  configs = _configs(MEMBERS, num_devices=1, vectorize_max_members=2, total_steps=2,
                     checkpoint_every_steps=2, eval_every_steps=0, log_every_steps=2)
  messages, done = [], []
  errors = loop.train_group(configs, [str(tmp_path / f"m{i}") for i in range(3)],
                            say=messages.append, on_done=lambda i, e: done.append(i))
  assert errors == [None] * 3 and done == [0, 1, 2]
  assert any("in chunks of 2" in m for m in messages)


def test_readahead_keeps_one_stream_per_key(monkeypatch):
  starts = []
  ahead = readahead.ReadAhead(lambda key, k: (key, k), num_threads=1, buffer=2)
  original = ahead._start  # pylint: disable=protected-access
  monkeypatch.setattr(ahead, "_start", lambda *a: starts.append(a[:2]) or original(*a))
  got = [ahead.get(key, k) for k in range(3) for key in ("a", "b")]
  assert got == [(key, k) for k in range(3) for key in ("a", "b")]
  assert starts == [("a", 0), ("b", 0)]  # alternating seeds no longer restart each other


SWEEP = textwrap.dedent("""
    from resnet_jax.config import default_config

    def get_config():
      c = default_config()
      c.update(model="resnet8", dataset="digits", batch_size=32, eval_batch_size=64,
               total_steps={steps}, lr_decay_steps=(), log_every_steps=2, eval_every_steps={steps},
               checkpoint_every_steps=2, num_devices=1)
      return c

    def get_grid():
      return {{"seed": [0, 1, 2]}}
""")


def test_sweep_vectorize_writes_ordinary_runs_and_reports(tmp_path, capsys):
  spec = tmp_path / "seeds.py"
  spec.write_text(SWEEP.format(steps=4))
  workdir = str(tmp_path / "sweep")
  assert cli.main(["sweep", "--config", str(spec), "--workdir", workdir, "--vectorize",
                   "--no-plots"]) == 0
  err = capsys.readouterr().err
  assert "[group of 3: seed0, seed1, seed2] training together" in err
  for name in ("seed0", "seed1", "seed2"):
    assert sweep.read_status(os.path.join(workdir, name))["status"] == "done"
  summary = open(os.path.join(workdir, "summary.md")).read()
  assert all(name in summary for name in ("seed0", "seed1", "seed2"))
  # Solo, the same member gives the same row.
  solo = str(tmp_path / "solo1")
  member = [m for m in sweep.load_members(str(spec)) if m.name == "seed1"][0]
  loop.train_and_evaluate(member.config, solo)
  a, b = _train_rows(solo)[-1], _train_rows(os.path.join(workdir, "seed1"))[-1]
  for key in a:
    rtol = BLOCK_RTOL if key.startswith("grad_norm/") else RTOL
    np.testing.assert_allclose(b[key], a[key], rtol=rtol, atol=1e-6, err_msg=key)
  # Re-run: every member is finished, nothing trains.
  assert cli.main(["sweep", "--config", str(spec), "--workdir", workdir, "--vectorize",
                   "--no-plots"]) == 0
  assert capsys.readouterr().err.count("finished already; skipped") == 3


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_sweep_group_resumes_after_kill_9(tmp_path):
  spec = tmp_path / "seeds.py"
  spec.write_text(SWEEP.format(steps=40))
  workdir = tmp_path / "sweep"
  cmd = [sys.executable, "-m", "resnet_jax.cli", "sweep", "--config", str(spec), "--workdir",
         str(workdir), "--vectorize", "--no-plots"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  try:
    while time.time() < deadline and proc.poll() is None:
      steps = [_last_checkpoint(workdir / f"seed{i}") for i in range(3)]
      if min(steps) >= 10:
        break
      time.sleep(0.2)
    assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
  assert any(_last_checkpoint(workdir / f"seed{i}") < 40 for i in range(3))
  rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  assert rerun.returncode == 0, rerun.stderr
  assert "resumed from step" in rerun.stderr
  for i in range(3):
    run_dir = workdir / f"seed{i}"
    assert sweep.read_status(run_dir)["status"] == "done"
    rows = metrics_log.read_metrics(str(run_dir))
    assert [r["step"] for r in rows] == list(range(1, 41))  # every step once, none twice


def _last_checkpoint(run_dir) -> int:
  ckpts = run_dir / "checkpoints"
  if not ckpts.exists():
    return -1
  steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()]
  return max(steps, default=-1)


def test_the_config_key_groups_members_without_the_flag_and_failures_are_recorded(tmp_path):
  spec = tmp_path / "seeds.py"
  spec.write_text(SWEEP.format(steps=4))
  calls = []

  def group_fn(configs, workdirs, say, on_done):
    calls.append([c.seed for c in configs])
    on_done(0, None)
    on_done(1, NonFiniteError("non-finite train/loss at step 3 (nan)."))
    raise RuntimeError("the group's setup broke after two members")

  results = sweep.run_sweep(str(spec), str(tmp_path / "w"), overrides={"vectorize": "True"},
                            group_fn=group_fn, train_fn=lambda c, w: None, log=lambda _: None)
  assert calls == [[0, 1, 2]]
  assert results == {"seed0": "done", "seed1": "failed", "seed2": "failed"}
  assert "non-finite" in sweep.read_status(tmp_path / "w" / "seed1")["error"]
  assert "setup broke" in sweep.read_status(tmp_path / "w" / "seed2")["error"]
