"""The package's layout: each subpackage is a layer that imports only the layers below it, no import
circles, a light models layer, run infrastructure outside training/, short functions, and the wheel
ships the presets without a top-level `configs`.
"""

import ast
import glob
import json
import os
import subprocess
import sys
import tomllib
import zipfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO_ROOT, "resnet_jax")


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, REPO_ROOT)[:-len(".py")].split(os.sep)
  if rel[-1] == "__init__":
    rel = rel[:-1]
  return ".".join(rel)


def _imports() -> dict[str, set[str]]:
  """module -> the resnet_jax modules (and `configs`) it imports anywhere, top-level or in functions."""
  modules = {_module_name(p): p for p in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True)}
  graph = {}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from resnet_jax.x import y` imports the submodule resnet_jax.x.y if there is one, else a
        # name defined in resnet_jax.x.
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                   for a in node.names]
      else:
        continue
      for target in targets:
        if target.startswith("configs"):
          deps.add("configs")
        while target and target not in modules:
          target = target.rpartition(".")[0]
        if target and target != name and target.startswith("resnet_jax"):
          deps.add(target)
    graph[name] = deps
  return graph


GRAPH = _imports()


def _subpackage(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "resnet_jax"


def test_no_import_cycles():
  """Tarjan's strongly connected components: every one must be a single module."""
  index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in GRAPH.get(v, ()):
      if w == "configs" or w not in GRAPH:
        continue
      # A package's __init__ importing its own submodules is how packages work; the submodule
      # importing siblings through the package is what would make a circle, and is kept.
      if w.startswith(v + "."):
        continue
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for v in sorted(GRAPH):
    if v not in index:
      visit(v)
  assert not cycles, f"import circles: {cycles}"


# The subpackages each layer may import (besides itself and `checks`, which has no dependencies).
ALLOWED = {
    "run": set(),
    "models": set(),
    "config": {"run"},
    "data": {"run"},
    "training": {"models", "data", "config", "run"},
    "experiments": {"models", "data", "config", "training", "run"},
    "bench": {"models", "data", "config", "training", "run"},
    "targets": {"models", "data", "config", "training", "run"},
    # The torchvision conversion and downloads use models only; `pretrained.convert` writes a run
    # (a trainer built from shapes: data.DataSpec).
    "pretrained": {"models", "data", "config", "training", "run"},
}
# Modules any layer may import: they import nothing of the package but each other. `targets.chips`
# and `targets.gpu` are the devices' published figures (read without JAX by the command line), which
# a run's utilisation (`training.goodput`) rates its steps against.
DEPENDENCY_FREE = {"resnet_jax.checks", "resnet_jax.targets.chips", "resnet_jax.targets.gpu"}
# What the command, experiments and conversions may use of training/: training itself (run, group,
# restore, validate, checkpoints), never the infrastructure a run stands on (that is run/).
# `lifecycle`: a run's workdir (RunFiles, which `convert` writes through; the resume check a sweep
# makes of every member first); `derived`: a run's facts from its config.
TRAINING_API = {"resnet_jax.training.loop", "resnet_jax.training.grouping",
                "resnet_jax.training.trainer", "resnet_jax.training.validation",
                "resnet_jax.training.checkpoints", "resnet_jax.training.lifecycle",
                "resnet_jax.training.derived"}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_layers_below(layer):
  for module, deps in GRAPH.items():
    if _subpackage(module) != layer:
      continue
    assert "configs" not in deps, f"{module} imports the configs/ presets; the package must not"
    bad = {d for d in deps - DEPENDENCY_FREE if _subpackage(d) not in ALLOWED[layer] | {layer}}
    assert not bad, f"{module} (layer {layer}) imports {sorted(bad)}"


def test_the_command_experiments_and_conversions_use_training_only_for_training():
  for module, deps in GRAPH.items():
    if _subpackage(module) in ("cli", "experiments", "pretrained"):
      used = {d for d in deps if d.startswith("resnet_jax.training.")}
      assert used <= TRAINING_API, f"{module} reaches into {sorted(used - TRAINING_API)}"


def test_no_function_over_60_lines():
  """One idea per function (STYLE.md): a function past 60 lines holds a second one."""
  long = []
  for path in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True):
    with open(path) as f:
      tree = ast.parse(f.read())
    long += [f"{os.path.relpath(path, REPO_ROOT)}:{n.name} ({n.end_lineno - n.lineno + 1} lines)"
             for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
             and n.end_lineno - n.lineno + 1 > 60]
  assert not long, long


def test_models_need_no_other_layer_and_the_step_no_loop():
  models_deps = set().union(*(d for m, d in GRAPH.items() if _subpackage(m) == "models"))
  assert {_subpackage(d) for d in models_deps} <= {"models", "checks"}
  step_deps = GRAPH["resnet_jax.training.step"]
  assert not step_deps & {"resnet_jax.training.loop", "resnet_jax.training.trainer"}


def test_every_subpackage_says_what_it_holds_and_may_import():
  for subpackage in ALLOWED:
    with open(os.path.join(PACKAGE, subpackage, "__init__.py")) as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ""
    assert "What lives here" in doc and "may import" in doc, subpackage


_BLOCK_EXTRAS = """
import importlib.abc, sys
BLOCKED = ("tensorflow", "tensorflow_datasets", "grain", "optax", "orbax", "ml_collections",
           "etils", "sklearn", "matplotlib", "tensorboardX", "PIL", "chex", "torch", "torchvision",
           "safetensors")
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ModuleNotFoundError(f"No module named {name!r} (blocked in this test)", name=name)
sys.meta_path.insert(0, Block())
"""


def _light(code: str) -> subprocess.CompletedProcess:
  """Runs `code` where only jax, flax, numpy and the standard library import: the light install."""
  return subprocess.run([sys.executable, "-c", _BLOCK_EXTRAS + code], capture_output=True, text=True,
                        cwd=REPO_ROOT, env={**os.environ, "RESNET_JAX_HUGEPAGES": "0"})


@pytest.mark.e2e
def test_models_import_with_only_jax_flax_and_numpy():
  """The data and training stacks are made unimportable; a model still builds and runs."""
  out = _light("""
import jax, jax.numpy as jnp
from resnet_jax import models
model = models.get_model("resnet8")
x = jnp.ones((2, 32, 32, 3))
logits = model.apply(model.init(jax.random.key(0), x, train=False), x, train=False)
print(logits.shape)
""")
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "(2, 10)"


@pytest.mark.e2e
def test_torchvision_conversion_of_numpy_state_dicts_needs_no_extra(tmp_path):
  """A torchvision-layout state dict of NumPy arrays (.npz) converts and runs without torch."""
  out = _light(f"""
import jax, jax.numpy as jnp, numpy as np
from resnet_jax import models, pretrained
model = models.get_model("resnet18", num_classes=7)
x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
variables = model.init(jax.random.key(0), x, train=False)
path = pretrained.save_state_dict(pretrained.to_torchvision(variables), {str(tmp_path / "r18.npz")!r})
back = pretrained.from_torchvision(pretrained.load_state_dict(path), "resnet18")
same = jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool((np.asarray(a) == b).all()),
                                                     variables, back))
print(same, bool((model.apply(back, x) == model.apply(variables, x)).all()))
""")
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["True", "True"]


@pytest.mark.e2e
def test_commands_say_which_extra_they_need():
  out = _light("""
from resnet_jax import cli
assert cli.main(["models", "resnet8"]) == 0
print("train", cli.main(["train", "--config", "configs/quickstart.py", "--workdir", "unused"]))
print("report", cli.main(["report", "unused"]))
""")
  assert out.returncode == 0, out.stderr
  assert "resnet8" in out.stdout and "train 2" in out.stdout and "report 2" in out.stdout
  # One line each, naming every missing package (a CUDA plugin, where installed, logs its own lines).
  train, report = [l for l in out.stderr.splitlines() if l.startswith("resnet-jax ")]
  assert "`resnet-jax train` needs packages" in train and "optax (train)" in train
  assert "ml_collections (train)" in train and "matplotlib" not in train
  assert train.endswith("pip install 'resnet-jax[train]'")
  assert "matplotlib (report)" in report and report.endswith("pip install 'resnet-jax[report]'")
  assert not os.path.exists(os.path.join(REPO_ROOT, "unused"))


def test_pyproject_lists_every_subpackage():
  with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
    setuptools = tomllib.load(f)["tool"]["setuptools"]
  on_disk = {_module_name(p) for p in glob.glob(os.path.join(PACKAGE, "**", "__init__.py"),
                                                 recursive=True)}
  presets = {"resnet_jax.presets" + _module_name(p)[len("configs"):]
             for p in glob.glob(os.path.join(REPO_ROOT, "configs", "**", "__init__.py"), recursive=True)}
  assert set(setuptools["packages"]) == on_disk | presets
  assert setuptools["package-dir"] == {"resnet_jax.presets": "configs"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                  "-w", str(out), REPO_ROOT], check=True, capture_output=True)
  (path,) = glob.glob(str(out / "*.whl"))
  return path


@pytest.mark.e2e
def test_wheel_ships_presets_but_no_top_level_configs(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
  top = {n.split("/")[0] for n in names}
  assert top == {"resnet_jax", next(t for t in top if t.endswith(".dist-info"))}
  for preset in ("quickstart.py", "cifar10.py", "sweeps/degradation_digits.py"):
    assert f"resnet_jax/presets/{preset}" in names
  assert "resnet_jax/config/defaults.py" in names


@pytest.mark.e2e
def test_installed_wheel_trains_a_shipped_preset_outside_the_checkout(wheel, tmp_path):
  """`--config configs/quickstart.py` from a directory with no configs/: the wheel's copy is used."""
  site = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                  wheel], check=True, capture_output=True)
  run_dir = tmp_path / "elsewhere"
  run_dir.mkdir()
  env = {**os.environ, "PYTHONPATH": str(site), "RESNET_JAX_HUGEPAGES": "0"}
  cmd = [sys.executable, "-m", "resnet_jax.cli", "train", "--config", "configs/quickstart.py",
         "--workdir", "run", "--config.model=resnet8", "--config.total_steps=2",
         "--config.lr_decay_steps=()", "--config.log_every_steps=1", "--config.eval_every_steps=0",
         "--config.checkpoint_every_steps=0", "--config.num_devices=1"]
  out = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert json.loads(out.stdout.strip().splitlines()[-1])["step"] == 2
  # The package ran from the wheel's copy, not from the checkout.
  code = "import resnet_jax, resnet_jax.config as c; print(resnet_jax.__file__); print(c.presets_dir())"
  where = subprocess.run([sys.executable, "-c", code], cwd=run_dir, env=env, capture_output=True,
                         text=True, check=True).stdout.split()
  assert where[0].startswith(str(site)) and where[1] == str(site / "resnet_jax" / "presets")
