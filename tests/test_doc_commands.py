"""Every shell command of README.md and the guides (docs/index.md, docs/guides/*.md) runs in the tests.

Each command of a fenced ```bash block (continuations joined, comments dropped, `&&` splitting a line
into its commands, a `for ... done` loop one command) is in COMMANDS below, as one of:

- Run: executed as written in a folder of its own, with the placeholders it shows (DIR, SOURCE,
  `[--config.KEY=VALUE ...]`, `...`) filled and overrides appended that shrink it to seconds (resnet8,
  a few steps, a few images), each stated beside it. Cheap ones (`--dry-run`, `models`) run in the
  default tier, the rest in the e2e tier, sharing finished runs where the docs chain them (eval after
  train, a report of a finished sweep).
- Check: a `resnet-jax compile` for a TPU slice. Compiling for a slice takes minutes on a CPU host
  even for resnet8 (3 min 47 s here, 2026-12-02), so the command is parsed by the real parser and its
  config loaded and validated for the slice's devices and processes, as `compile` does before it
  compiles (the check that caught every preset failing on 8 devices); `tests/test_targets.py`
  compiles resnet8 for a single- and a multi-host slice through the same command.
- Elsewhere: executed, as written or shrunk, by the named test (which this file checks exists).
- Skip: cannot run here, with the reason (a cloud, a GPU, a download, or the suite itself).

A command added to the docs fails `test_every_doc_command_is_accounted_for` until it is listed here; a
listed command gone from the docs fails it too. A command that fails fails the suite.
"""

import dataclasses
import glob
import os
import re
import shlex
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "docs", "index.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "guides", "*.md")))
SHELL = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.S | re.M)


def _logical_lines(block: str) -> list[str]:
  """A block's commands: continuations joined, comments dropped, `for ... done` kept whole."""
  text = block.replace("\\\n", " ")
  lines, loop = [], []
  for line in text.splitlines():
    line = re.sub(r"(^|\s)#.*$", "", line).strip()
    if not line:
      continue
    if loop or line.startswith("for "):
      loop.append(line)
      if line == "done":
        lines.append("; ".join(loop))
        loop = []
      continue
    lines += [part.strip() for part in line.split(" && ")]
  return [" ".join(line.split()) for line in lines]


def doc_commands() -> dict[str, list[str]]:
  """{command: [pages it appears on]} for every fenced shell command of README and the guides."""
  out = {}
  for page in PAGES:
    for block in SHELL.findall(open(page, encoding="utf-8").read()):
      for command in _logical_lines(block):
        out.setdefault(command, []).append(os.path.relpath(page, ROOT))
  return out


@dataclasses.dataclass(frozen=True)
class Run:
  """Executed: `fill` replaces placeholders, `add` is appended, `why` says what they shrink."""
  why: str
  fill: tuple = ()          # ((placeholder, value), ...), replaced in order
  add: str = ""
  cheap: bool = False       # the default tier (seconds, no training); else e2e
  after: tuple = ()         # commands (keys of COMMANDS) whose results this one reads
  cifar10: bool = False     # needs the real CIFAR-10 (skips where the tests' copy is absent)


@dataclasses.dataclass(frozen=True)
class Check:
  why: str


@dataclasses.dataclass(frozen=True)
class Elsewhere:
  test: str                 # tests/FILE.py::NAME
  why: str


@dataclasses.dataclass(frozen=True)
class Skip:
  why: str


# Shrinking overrides, named once: a few steps of the smallest net, every cadence inside them.
DIGITS_SWEEP = ("--shard 0/4 --config.total_steps=4 --config.lr_decay_steps='()' "
                "--config.warmup_steps=2 --config.log_every_steps=2 --config.eval_every_steps=4 "
                "--config.checkpoint_every_steps=4")
SHORT = ("--config.total_steps=4 --config.lr_decay_steps='()' --config.log_every_steps=2 "
         "--config.eval_every_steps=4 --config.checkpoint_every_steps=4")
CIFAR_SHORT = ("--config.model=resnet8 --config.batch_size=16 --config.total_steps=4 "
               "--config.lr_decay_steps='()' --config.warmup_steps=0 --config.log_every_steps=4 "
               "--config.eval_every_steps=4 --config.checkpoint_every_steps=4 "
               "--config.normalization_examples=64 --config.validation_split=32")
CIFAR_WHY = ("resnet8, batch 16, 4 steps, statistics of 64 images, evaluated on 32 held-out training "
             "images instead of the 10,000 test images; the data is CIFAR-10 prepared by the data "
             "guide's own `prepare` command")
PREPARE = "resnet-jax prepare cifar10 --source ../shared/data/cifar10 --data-dir ~/tfds"
README_SWEEP = ("resnet-jax sweep --config configs/sweeps/degradation_digits.py --workdir "
                "runs/degradation")
QUICKSTART = ("resnet-jax train --config configs/quickstart.py --workdir runs/quickstart "
              "[--config.KEY=VALUE ...]")
CONVERT = ("resnet-jax convert --from torchvision resnet50 resnet50-11ad3fa6.pth --workdir "
           "runs/tv-resnet50 --config.data_dir=DIR")
INSTALL = "installs packages: the tests run in the install CI made (.[test], every extra included)"
COMPILE_CHECK = ("compiling for a TPU slice takes minutes on a CPU host: parsed, loaded and validated "
                 "for the slice's devices and processes instead")
GCLOUD = "needs Google Cloud (creates or uses a TPU or GPU VM); its --dry-run form runs in tests/test_launch.py"

COMMANDS = {
    # README.md
    "pip install -e '.[report]'": Skip(INSTALL),
    README_SWEEP: Run("one member of four (plain-20), 4 steps, every cadence inside them",
                      add=DIGITS_SWEEP),
    "pip install -e '.[test]'": Skip(INSTALL),
    "python -m pytest": Skip("the test suite itself: CI runs it verbatim (.ci/run)"),
    "pip install -e '.[docs]'": Skip(INSTALL),
    "mkdocs build --strict": Elsewhere("tests/test_site.py::test_the_site_builds_strictly_offline",
                                       "builds the site strictly, with the network refused"),
    # docs/guides/training.md
    QUICKSTART: Run("resnet8, 4 steps", fill=(("[--config.KEY=VALUE ...]",
                                                "--config.model=resnet8 " + SHORT),)),
    "resnet-jax eval --workdir runs/quickstart": Run("evaluates the quickstart run above",
                                                     after=(QUICKSTART,)),
    "resnet-jax bench --model resnet20 --batch-size 128 --steps 10 [--dtype bfloat16]": Run(
        "resnet8, batch 8, 2 steps (the later flags win), in bfloat16",
        fill=(("[--dtype bfloat16]", "--dtype bfloat16"),),
        add="--model resnet8 --batch-size 8 --steps 2"),
    "resnet-jax models [NAMES] [--json]": Run("two names, JSON", fill=(("[NAMES]", "resnet20 plain20"),
                                                                      ("[--json]", "--json")),
                                              cheap=True),
    "resnet-jax convert --from torchvision resnet50 SOURCE --workdir DIR": Run(
        "SOURCE: a torchvision resnet50 with random weights saved here (no download)",
        fill=(("SOURCE", "resnet50-11ad3fa6.pth"), ("DIR", "runs/tv-resnet50-b"))),
    "resnet-jax compile --topology v5e-8 --config configs/imagenet.py:resnet50": Check(COMPILE_CHECK),
    # docs/guides/models.md
    "resnet-jax convert --from torchvision resnet50 IMAGENET1K_V2 --workdir runs/tv-resnet50 "
    "--config.data_dir=DIR": Skip(
        "downloads torchvision's weights; the download, checksum and cache run against a local file "
        "server in tests/test_pretrained.py, and the offline form below runs here"),
    CONVERT: Run("a torchvision resnet50 with random weights saved under that name (no download)",
                 fill=(("DIR", "data/tfds"),)),
    "resnet-jax eval --workdir runs/tv-resnet50": Skip(
        "evaluates on the ImageNet validation set (a 6.4 GB manual download); eval runs above on the "
        "quickstart run"),
    "resnet-jax train --config configs/finetune.py --workdir runs/ft-cifar10 --config.init_from="
    "runs/tv-resnet50 --config.model=resnet50 --config.dataset=cifar10 "
    "--config.normalization=torchvision --config.data_dir=DIR": Elsewhere(
        "tests/test_finetune.py::test_full_finetune_trains_the_backbone_with_frozen_bn_statistics",
        "compiling ResNet-50's train step takes minutes on a CPU, and `model` must be the source's; "
        "the test fine-tunes through the same preset and init_from, on resnet8"),
    # docs/guides/paper.md
    "resnet-jax train --config configs/cifar10.py:resnet56 --config.data_dir=data/tfds --workdir "
    "runs/r56": Run(CIFAR_WHY, add=CIFAR_SHORT, after=(PREPARE,), cifar10=True),
    "resnet-jax train --config configs/cifar10_fast.py:resnet20 --config.data_dir=data/tfds "
    "--workdir runs/cifar10_fast": Run(CIFAR_WHY, add=CIFAR_SHORT, after=(PREPARE,), cifar10=True),
    "resnet-jax sweep --config configs/sweeps/degradation_digits.py --workdir runs/degradation "
    "[--shard i/n] [--config.KEY=VALUE ...]": Run(
        "the README's shrunk sweep again: finished, so it skips its member and rewrites the report",
        fill=(("[--shard i/n] [--config.KEY=VALUE ...]", DIGITS_SWEEP),), after=(README_SWEEP,)),
    "resnet-jax sweep --config configs/sweeps/seeds_digits.py --workdir runs/seeds --vectorize": Run(
        "two of the eight seeds (shard 0/4 takes members 0 and 4), resnet8, 4 steps: still one "
        "vectorised group", add="--shard 0/4 " + SHORT),
    "benchmarks/table6.sh --source ../shared/data/cifar10 runs/table6": Skip(
        "35 runs of 64k steps: hours on a GPU; its --smoke form runs in tests/test_table6.py"),
    "benchmarks/table6.sh --smoke --data-dir DIR runs/table6_smoke": Elsewhere(
        "tests/test_table6.py::test_table6_smoke_runs_the_whole_path",
        "the same command on the tests' prepared CIFAR-10 (minutes: shared, not run twice)"),
    # docs/guides/data.md
    "pip install -e '.[data]'": Skip(INSTALL),
    "resnet-jax train --config configs/quickstart.py --workdir runs/r20 --config.dataset=cifar10 "
    "--config.model=resnet20 --config.augment=cifar --config.normalization=per_pixel_mean "
    "--config.total_steps=391 --config.lr_decay_steps='()' --config.eval_every_steps=0": Run(
        CIFAR_WHY + "; the prepared data sits in TFDS's default folder (~/tensorflow_datasets), so "
        "this online form finds it and downloads nothing", fill=(("runs/r20", "runs/r20-online"),),
        add=CIFAR_SHORT, after=(PREPARE,), cifar10=True),
    PREPARE: Run("prepares the real CIFAR-10 once; the commands that read it come after",
                 cifar10=True),
    "resnet-jax prepare cifar100 --source DIR --data-dir ~/tfds": Skip(
        "needs CIFAR-100's files (a download); the same code path runs on CIFAR-10 here"),
    "resnet-jax prepare imagenet2012 --source MANUAL_DIR --data-dir ~/tfds": Skip(
        "needs ImageNet's tars (a manual download of 150 GB); tests/test_prepare.py builds a tiny "
        "layout of the same shape"),
    "resnet-jax train --config configs/quickstart.py --workdir runs/r20 --config.dataset=cifar10 "
    "--config.data_dir=$HOME/tfds ...": Run(CIFAR_WHY, fill=(("...", "--config.augment=cifar " +
                                                               CIFAR_SHORT),),
                                           after=(PREPARE,), cifar10=True),
    "resnet-jax prepare cifar10 --source ../shared/data/cifar10 --data-dir DIR": Run(
        "DIR: the folder prepared above (~/tfds), so it says the data is prepared and does nothing",
        fill=(("DIR", "~/tfds"),), after=(PREPARE,), cifar10=True),
    "resnet-jax data-bench --data cifar10 --data-dir DIR --steps 100 --threads 0,1,2": Run(
        "DIR: ~/tfds; 2 steps, threads 0 and 1", fill=(("DIR", "~/tfds"),),
        add="--steps 2 --threads 0,1",
        after=("resnet-jax prepare cifar10 --source ../shared/data/cifar10 --data-dir DIR",),
        cifar10=True),
    "resnet-jax data-bench --data fake-imagenet --batch-size 64 --steps 8 --threads 0,2": Run(
        "batch 8, 1 step, no threads", add="--batch-size 8 --steps 1 --threads 0"),
    "resnet-jax data-bench --data photos --batch-size 64 --steps 8 --threads 0,2 --workers 1,2": Run(
        "batch 8, 1 step, no threads, one worker process", add="--batch-size 8 --steps 1 --threads 0 "
        "--workers 1"),
    "resnet-jax bench --model resnet20 --batch-size 128 --steps 10": Run(
        "resnet8, batch 8, 2 steps (the later flags win)", add="--model resnet8 --batch-size 8 --steps 2"),
    "resnet-jax train --config configs/quickstart.py --workdir runs/r20 --config.dataset=cifar10 "
    "--config.data_dir=DIR --config.model=resnet20 --config.augment=cifar "
    "--config.normalization=per_pixel_mean --config.batch_size=128 --config.total_steps=391 "
    "--config.lr_decay_steps='()' --config.eval_every_steps=0 --config.checkpoint_every_steps=0 "
    "--config.log_every_steps=50": Run(CIFAR_WHY, fill=(("runs/r20", "runs/r20-epoch"),
                                                          ("DIR", "$HOME/tfds")),
                                       add=CIFAR_SHORT,
                                       after=("resnet-jax prepare cifar10 --source "
                                              "../shared/data/cifar10 --data-dir DIR",),
                                       cifar10=True),
    # docs/guides/cloud.md
    "resnet-jax compile --topology v5e-8 --config configs/imagenet.py:resnet50 "
    "--config.dtype=bfloat16 --config.batch_size=1024": Check(COMPILE_CHECK),
    "resnet-jax compile --topology v4-8 --config configs/imagenet.py:resnet50 --max-batch": Check(
        COMPILE_CHECK + " (--max-batch compiles a dozen times)"),
    "resnet-jax compile --topology h100-8 --config configs/imagenet.py:resnet50 "
    "--config.dtype=bfloat16 --config.batch_size=2048": Elsewhere(
        "tests/test_targets.py::test_resnet8_compiles_for_one_and_eight_gpus",
        "compiles resnet8 for one and eight H100s through the command (ResNet-50 takes minutes)"),
    "launch/gpu_vm.sh check --machine-type a3-highgpu-8g -- train --config configs/imagenet.py:resnet50 "
    "--workdir gs://BUCKET/r50": Run("--dry-run: prints the compile command it would run",
                                     fill=(("check", "check --dry-run"),), cheap=True),
    "launch/tpu_vm.sh check --accelerator-type v5litepod-16 -- train --config ... --workdir gs://...":
        Run("--dry-run: prints the compile command it would run", fill=(("check", "check --dry-run"),),
            cheap=True),
    "launch/tpu_vm.sh create --name r50 --zone us-central2-b --accelerator-type v4-8": Run(
        "--dry-run: prints the gcloud commands", fill=(("create", "create --dry-run"),), cheap=True),
    "launch/tpu_vm.sh setup --name r50 --zone us-central2-b": Run(
        "--dry-run", fill=(("setup", "setup --dry-run"),), cheap=True),
    "launch/tpu_vm.sh run --name r50 --zone us-central2-b -- train --config "
    "configs/imagenet.py:resnet50 --workdir gs://BUCKET/runs/resnet50 "
    "--config.data_dir=gs://BUCKET/tensorflow_datasets": Run(
        "--dry-run", fill=(("sh run", "sh run --dry-run"),), cheap=True),
    "launch/tpu_vm.sh watch --name r50 --zone us-central2-b --accelerator-type v4-8 --spot -- train "
    "--config configs/imagenet.py:resnet50 --workdir gs://BUCKET/runs/resnet50 "
    "--config.data_dir=gs://BUCKET/tensorflow_datasets": Run(
        "--dry-run", fill=(("watch", "watch --dry-run"),), cheap=True),
    "for i in 0 1 2 3; do; launch/gpu_vm.sh watch --name sweep-$i --zone us-central1-a --spot -- "
    "sweep --config configs/sweeps/<file>.py --workdir runs/sweep --shard $i/4 &; done": Skip(GCLOUD),
    "wait": Skip("waits for the loop above (shell builtin)"),
    "for i in 0 1 2 3; do; gcloud compute instances start sweep-$i --zone us-central1-a; gcloud "
    "compute scp --recurse --zone us-central1-a sweep-$i:resnet-jax/runs/sweep runs/; done": Skip(
        "needs Google Cloud: starts the VMs and copies their runs back"),
    "resnet-jax report runs/sweep": Run(
        "runs/sweep is the README's finished (shrunk) sweep, copied there",
        after=(README_SWEEP,)),
    "launch/local.sh 2 --config configs/quickstart.py --workdir runs/two_processes": Run(
        "--dry-run (before N): prints both processes' commands; tests/test_multiprocess.py runs "
        "local.sh with 2 processes through SIGTERM and SIGKILL",
        fill=(("local.sh 2", "local.sh --dry-run 2"),), cheap=True),
    # docs/guides/development.md
    "python -m pytest -m e2e": Skip("the end-to-end tier of this suite: CI runs it (.ci/run)"),
}


def test_every_doc_command_is_accounted_for():
  found = doc_commands()
  unlisted = sorted(set(found) - set(COMMANDS))
  assert not unlisted, ("commands in the docs with no entry in tests/test_doc_commands.py (run it "
                        f"shrunk, or say why it cannot run): {[(c, found[c]) for c in unlisted]}")
  stale = sorted(set(COMMANDS) - set(found))
  assert not stale, f"entries for commands no longer in the docs: {stale}"


def test_the_tests_named_elsewhere_exist():
  for spec in COMMANDS.values():
    if isinstance(spec, Elsewhere):
      path, name = spec.test.split("::")
      text = open(os.path.join(ROOT, path), encoding="utf-8").read()
      assert re.search(rf"^def {re.escape(name)}\(", text, re.M), spec.test


def _command(doc: str) -> str:
  spec = COMMANDS[doc]
  command = doc
  for placeholder, value in spec.fill:
    assert placeholder in command, (doc, placeholder)
    command = command.replace(placeholder, value, 1)
  return f"{command} {spec.add}".strip()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
  """A folder to run doc commands in, as a user's checkout: configs/, benchmarks/, launch/ linked;
  HOME inside it (for ~/tfds), the real CIFAR-10 at ../shared/data/cifar10, and a record of what ran."""
  top = tmp_path_factory.mktemp("doc_commands")
  work = top / "home" / "resnet-jax"
  work.mkdir(parents=True)
  for name in ("configs", "benchmarks", "launch"):
    (work / name).symlink_to(os.path.join(ROOT, name))
  from tests import conftest  # pylint: disable=g-import-not-at-top
  (top / "home" / "shared" / "data").mkdir(parents=True)
  (top / "home" / "shared" / "data" / "cifar10").symlink_to(os.path.abspath(conftest.CIFAR10_SOURCE))
  (work / "data").mkdir()
  (work / "data" / "tfds").symlink_to(top / "home" / "tfds")  # the paper guide's data/tfds
  (top / "home" / "tensorflow_datasets").symlink_to(top / "home" / "tfds")  # TFDS's default folder
  env = dict(os.environ, HOME=str(top / "home"), PYTHONPATH=ROOT,
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  return types.SimpleNamespace(work=work, env=env, done={})


def _execute(doc: str, box) -> subprocess.CompletedProcess:
  """Runs a doc command (after what it reads) in the sandbox; fails the test if it fails."""
  if doc in box.done:
    return box.done[doc]
  spec = COMMANDS[doc]
  if spec.cifar10:
    from tests import conftest  # pylint: disable=g-import-not-at-top
    if not conftest.has_cifar10(conftest.CIFAR10_SOURCE):
      pytest.skip("real CIFAR-10 absent (docs/guides/development.md)")
  for before in spec.after:
    _execute(before, box)
  if "resnet50-11ad3fa6.pth" in _command(doc) and not (box.work / "resnet50-11ad3fa6.pth").exists():
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
    torch.save(torchvision.models.resnet50().state_dict(), box.work / "resnet50-11ad3fa6.pth")
  if doc == "resnet-jax report runs/sweep" and not (box.work / "runs" / "sweep").exists():
    (box.work / "runs" / "sweep").symlink_to(box.work / "runs" / "degradation")
  command = _command(doc)
  done = subprocess.run(["bash", "-c", command], cwd=box.work, env=box.env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert done.returncode == 0, (f"doc command failed (exit {done.returncode}): {doc}\nran: {command}\n"
                                f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
  box.done[doc] = done
  return done


CHEAP = [c for c, s in COMMANDS.items() if isinstance(s, Run) and s.cheap]


def _id(command: str) -> str:
  return re.sub(r"[^\w.:/=,-]+", "_", command)[:90]

SLOW = [c for c, s in COMMANDS.items() if isinstance(s, Run) and not s.cheap]
CHECKS = [c for c, s in COMMANDS.items() if isinstance(s, Check)]


@pytest.mark.parametrize("doc", CHEAP, ids=_id)
def test_cheap_doc_command_runs(doc, sandbox):  # pylint: disable=redefined-outer-name
  done = _execute(doc, sandbox)
  if "--dry-run" in _command(doc):
    assert done.stdout.strip(), "a dry run printed no commands"


@pytest.mark.e2e
@pytest.mark.parametrize("doc", SLOW, ids=_id)
def test_doc_command_runs(doc, sandbox):  # pylint: disable=redefined-outer-name
  _execute(doc, sandbox)


@pytest.mark.parametrize("doc", CHECKS, ids=_id)
def test_compile_command_is_valid_for_its_slice(doc, monkeypatch):
  """Parsed by the command's parser, its config loaded with its overrides and validated for the
  slice's compile-only devices (libtpu's description of the slice, no compilation): what `resnet-jax
  compile` does before it compiles."""
  from resnet_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.cli import commands as commands_lib, parser  # pylint: disable=g-import-not-at-top
  from resnet_jax.run import process  # pylint: disable=g-import-not-at-top
  from resnet_jax.targets import chips, devices as target  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import validation  # pylint: disable=g-import-not-at-top

  args, extra = parser.build_parser(commands_lib.COMMANDS).parse_known_args(shlex.split(doc)[1:])
  assert args.command == "compile"
  slice_ = chips.find(args.topology)
  assert slice_ is not None, args.topology
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # as the command sets them
  for key, value in process.libtpu_host_defaults(os.environ, slice_.cloud_name).items():
    monkeypatch.setenv(key, value)
  config = config_lib.load(os.path.join(ROOT, args.config), commands_lib.split_overrides(extra))
  validation.validate(config, target.devices_of(slice_))
