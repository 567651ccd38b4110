"""The docs keep their promises: every published result names the command and date that produced it,
and every relative link in README.md and docs/ points at a file that exists."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = sorted(glob.glob(os.path.join(ROOT, "docs", "results", "*", "README.md")))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target)


def test_there_are_results_to_check():
  assert len(RESULTS) >= 4, RESULTS


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_each_result_names_its_command_date_and_machine(path):
  text = open(path, encoding="utf-8").read()
  blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
  assert any(re.search(r"\b(resnet-jax|python|bash|benchmarks/)\S*", b) for b in blocks), (
      f"{path}: no command block")
  assert re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{path}: no date (YYYY-MM-DD)"
  assert re.search(r"\bCPU\b|Xeon|EPYC|GPU", text), f"{path}: no machine"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(path):
  text = open(path, encoding="utf-8").read()
  missing = []
  for target in LINK.findall(text):
    if "://" in target or target.startswith(("#", "mailto:")):
      continue
    file = target.split("#")[0]
    if file and not os.path.exists(os.path.join(os.path.dirname(path), file)):
      missing.append(target)
  assert not missing, f"{os.path.relpath(path, ROOT)} links to missing files: {missing}"


# --- The command reference page is the parser's own help, and README's extras table is pyproject's. ---

README = os.path.join(ROOT, "README.md")
COMMANDS_PAGE = os.path.join(ROOT, "docs", "guides", "commands.md")
HELP_COLUMNS = "100"  # argparse wraps at the terminal's width: the reference is at this one


def help_text(command: str | None) -> str:
  """`resnet-jax [COMMAND] --help` as printed at HELP_COLUMNS columns."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  from resnet_jax import cli  # pylint: disable=g-import-not-at-top

  columns = os.environ.get("COLUMNS")
  os.environ["COLUMNS"] = HELP_COLUMNS
  out = io.StringIO()
  try:
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
      cli.main([command, "--help"] if command else ["--help"])
  finally:
    if columns is None:
      os.environ.pop("COLUMNS")
    else:
      os.environ["COLUMNS"] = columns
  return out.getvalue().rstrip("\n")


def commands() -> list[str]:
  from resnet_jax.cli.commands import COMMANDS  # pylint: disable=g-import-not-at-top

  return list(COMMANDS)


def reference_page() -> str:
  """docs/guides/commands.md as these tests expect it, from the parser."""
  parts = ["# Command reference", "",
           f"`resnet-jax --help` and each `resnet-jax COMMAND --help`, verbatim at {HELP_COLUMNS} "
           "columns. `tests/test_docs.py` compares them with the parser, and `python -m "
           "tests.test_docs` rewrites this page after a change to it.", ""]
  for command in [None] + commands():
    title = f"resnet-jax {command + ' ' if command else ''}--help"
    parts += [f"<details><summary><code>{title}</code></summary>", "", "```text",
              help_text(command), "```", "", "</details>", ""]
  return "\n".join(parts).rstrip() + "\n"


def test_command_reference_is_the_help_of_every_command():
  assert os.path.exists(COMMANDS_PAGE), "no command reference page: run python -m tests.test_docs"
  text = open(COMMANDS_PAGE, encoding="utf-8").read()
  assert text == reference_page(), (
      "docs/guides/commands.md differs from --help: run python -m tests.test_docs")


def test_every_help_names_its_exit_codes_and_every_option_is_described():
  for command in commands():
    text = help_text(command)
    assert "exit codes:" in text, command
    # An option without a description: its line ends at its metavar, and no indented line follows.
    lines = text.splitlines() + [""]
    bare = [line.strip() for line, after in zip(lines, lines[1:])
            if re.fullmatch(r"  -[^ ].*?(?: [A-Z_\[\]:/.]+)?", line) and "  " not in line.strip()
            and not re.match(r" {10,}\S", after)]
    assert not bare, f"{command}: options without a description: {bare}"
  for command in ("train", "sweep", "compile"):
    text = help_text(command)
    assert "--config.KEY=VALUE" in text and "FILE:ARG" in text, command


def test_version_prints_the_package_version(capsys):
  from resnet_jax import __version__, cli  # pylint: disable=g-import-not-at-top

  with pytest.raises(SystemExit) as stop:
    cli.main(["--version"])
  assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"resnet-jax {__version__}"


def _extras() -> dict[str, list[str]]:
  import tomllib  # pylint: disable=g-import-not-at-top

  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]["optional-dependencies"]


def test_readme_extras_table_lists_every_extra_of_pyproject():
  text = open(README, encoding="utf-8").read()
  table = re.search(r"\| extra \| adds \| for \|\n\|---\|---\|---\|\n((?:\|.*\|\n)+)", text)
  assert table, "README has no extras table (| extra | adds | for |)"
  listed = re.findall(r"^\| `([\w-]+)` \|", table.group(1), re.M)
  assert sorted(listed) == sorted(_extras()), (listed, sorted(_extras()))


def test_readme_first_command_installs_the_smallest_extra_its_job_needs():
  from resnet_jax.run import extras  # pylint: disable=g-import-not-at-top

  import shlex  # pylint: disable=g-import-not-at-top
  from resnet_jax.cli import commands as commands_lib, parser  # pylint: disable=g-import-not-at-top

  first = open(README, encoding="utf-8").read().split("```bash\n", 1)[1].splitlines()[0]
  installed = re.search(r"pip install -e '\.\[(\w+)\]'", first).group(1)
  args, _ = parser.build_parser(commands_lib.COMMANDS).parse_known_args(
      shlex.split(first.split("resnet-jax ", 1)[1]))
  needed = {extras.PACKAGES[m] for m in commands_lib.needs(args)}
  smallest = [e for e in needed if not any(e in extras.INCLUDES.get(o, ()) for o in needed)]
  assert [installed] == smallest, (first, needed)
  heavy = {"torch", "torchvision", "tensorflow", "tensorflow-cpu", "libtpu", "jax[tpu]",
           "jax[cuda12]", "jax[cuda13]"}
  closure, todo = set(), [installed]
  while todo:  # the extra's requirements, through the extras it includes
    for req in _extras()[todo.pop()]:
      inner = re.match(r"resnet-jax\[([\w,]+)\]", req)
      if inner:
        todo += [e for e in inner.group(1).split(",") if e not in closure]
        closure.update(inner.group(1).split(","))
      else:
        name = re.match(r"[\w.-]+(\[[\w,]+\])?", req.lower()).group(0)
        assert name not in heavy and not name.startswith("nvidia"), f"[{installed}] pulls in {req}"


# --- Numbers in the presets' comments are the presets' own. ---

TRAIN_SIZES = {"digits": 1497, "cifar10": 50_000, "imagenet2012": 1_281_167}
# (config, a pattern in its file with named groups: epochs, and steps / batch where the text gives
# them; mine: whether those steps are the config's own total_steps, not the paper's).
CLAIMS = [
    ("configs/quickstart.py", r"~(?P<epochs>\d+) epochs in (?P<steps>[\d,]+) steps of (?P<batch>\d+)", True),
    ("configs/sweeps/degradation_digits.py", r"~(?P<epochs>\d+) epochs of the 1,497", True),
    ("configs/sweeps/seeds_digits.py", r"~(?P<epochs>\d+) epochs of the 1,497", True),
    ("configs/sweeps/degradation_cifar10.py", r"for (?P<steps>[\d,]+) steps \((?P<epochs>[\d.]+) epochs\)",
     True),
    ("configs/imagenet.py:resnet50", r"\"up to (?P<steps>60e4) iterations\" \((?P<epochs>\d+) epochs\)", False),
    ("configs/cifar10_fast.py", r"total_steps (?P<steps>[\d,]+) \((?P<epochs>[\d.]+) epochs\)", True),
]


@pytest.mark.parametrize("spec,pattern,mine", CLAIMS, ids=[c[0] for c in CLAIMS])
def test_epochs_and_steps_in_preset_comments_match_the_preset(spec, pattern, mine):
  from resnet_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  path = os.path.join(ROOT, spec.split(":")[0])
  match = re.search(pattern, open(path, encoding="utf-8").read())
  assert match, f"{path}: the comment this test checks is gone: {pattern}"
  config = config_lib.load(os.path.join(ROOT, spec))
  claim = match.groupdict()
  steps = float(claim["steps"].replace(",", "")) if claim.get("steps") else config.total_steps
  batch = int(claim["batch"]) if claim.get("batch") else config.batch_size
  if mine:
    assert (steps, batch) == (config.total_steps, config.batch_size), (claim, config.total_steps)
  epochs = steps * batch / TRAIN_SIZES[config.dataset]
  decimals = len(claim["epochs"].partition(".")[2])
  assert abs(epochs - float(claim["epochs"])) <= 0.5 * 10 ** -decimals, (claim, epochs)


if __name__ == "__main__":  # rewrites the command reference page from the parser
  with open(COMMANDS_PAGE, "w", encoding="utf-8") as f:
    f.write(reference_page())
  print(f"rewrote {COMMANDS_PAGE}")


def _page_script(name: str):
  from tests.helpers import load_script  # pylint: disable=g-import-not-at-top
  return load_script(os.path.join(ROOT, "docs", "results", "cifar10_resnet20", name),
                     f"cifar10_resnet20_{name[:-3]}")


def test_converged_run_page_tables_are_derived_from_its_stored_logs():
  """docs/results/cifar10_resnet20's tables are what its plot script computes from the stored runs."""
  folder = os.path.join(ROOT, "docs", "results", "cifar10_resnet20")
  plot = _page_script("plot.py")
  seeds = sorted(glob.glob(os.path.join(folder, "seed*")))
  assert seeds, "no stored seed runs"
  page = open(os.path.join(folder, "README.md"), encoding="utf-8").read()
  missing = [line for line in plot.markdown([plot.read_run(d) for d in seeds]).splitlines()
             if line and line not in page]
  assert not missing, f"the page does not show what plot.py derives: {missing}"


def test_bn_check_reestimates_the_running_statistics_from_the_weights_alone(tmp_path):
  """The page's BN check: zero batches leave the checkpoint as it was evaluated; enough batches
  forget the saved statistics (any starting values end at the same place, set by the weights)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import loop  # pylint: disable=g-import-not-at-top
  from resnet_jax.training.trainer import restore  # pylint: disable=g-import-not-at-top
  from tests.helpers import max_abs_diff, small_config  # pylint: disable=g-import-not-at-top

  bn_check = _page_script("bn_check.py")
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(small_config(total_steps=4, eval_every_steps=4), workdir)
  (row,) = bn_check.check(workdir, [4], num_batches=0)
  assert row["saved"] == row["reestimated"] == row["logged"] == loop.evaluate_checkpoint(workdir)[
      "eval/accuracy"]

  trainer, state = restore(workdir, 4, num_devices=1)
  scrambled = state.replace(batch_stats=jax.tree_util.tree_map(lambda x: 5.0 * x + 1.0,
                                                               state.batch_stats))
  a = bn_check.reestimate(trainer, state, 80)
  b = bn_check.reestimate(trainer, scrambled, 80)
  assert max_abs_diff(state.batch_stats, scrambled.batch_stats) > 0.5
  assert max_abs_diff(a.batch_stats, b.batch_stats) < 1e-2  # 0.9**80 of a difference of ~5
  assert max_abs_diff(a.params, state.params) == 0.0
  assert max_abs_diff(a.batch_stats, state.batch_stats) > 1e-3  # it did move them
  assert np.isfinite(bn_check.test_accuracy(trainer, a))
  assert "| 4 |" in bn_check.markdown([row], 0)


def test_validation_tables_are_derived_from_the_stored_held_out_runs():
  """The recipe check's tables come from runs that held out 5,000 training images, and the script
  refuses a run evaluated on the test set (a seed run here), so no test figure can pass as one."""
  folder = os.path.join(ROOT, "docs", "results", "cifar10_resnet20")
  validation = _page_script("validation.py")
  runs = [validation.plot.read_run(d)
          for d in sorted(glob.glob(os.path.join(folder, "validation", "*", "")))]
  assert runs, "no stored validation runs"
  assert all(r["config"]["validation_split"] == 5000 for r in runs)
  page = open(os.path.join(folder, "README.md"), encoding="utf-8").read()
  missing = [line for line in validation.markdown(runs).splitlines() if line and line not in page]
  assert not missing, f"the page does not show what validation.py derives: {missing}"
  with pytest.raises(SystemExit, match="validation_split is 0"):
    validation.markdown([validation.plot.read_run(os.path.join(folder, "seed0"))])
