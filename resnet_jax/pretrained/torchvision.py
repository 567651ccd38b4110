"""torchvision ResNet state dicts <-> our variables, in NumPy only (no torch needed).

torchvision's resnet18/34/50/101/152 are our ImageNet presets of the same names: option-B shortcuts,
v1.5 bottlenecks (stride on the 3x3), the same explicit paddings, BN epsilon 1e-5 and momentum 0.1
(ours: 0.9 = 1 - 0.1), hence the same parameter counts. What is copied, name by name:

  torchvision                           ours ({"params": ..., "batch_stats": ...})
  conv1.weight [O, I, kh, kw]           params/stem_conv/kernel [kh, kw, I, O]  (OIHW -> HWIO)
  bn1.weight, bn1.bias                  params/stem_bn/scale, params/stem_bn/bias
  bn1.running_mean, bn1.running_var     batch_stats/stem_bn/mean, batch_stats/stem_bn/var
  layerI.J.convK, layerI.J.bnK          stageI_block(J+1)/convK, stageI_block(J+1)/bnK
  layerI.J.downsample.0 / .1            stageI_block(J+1)/proj_conv / proj_bn
  fc.weight [classes, C], fc.bias       params/head/kernel [C, classes] (transposed), params/head/bias

The running variance is copied unchanged. torchvision accumulates the *unbiased* batch variance
(times n/(n-1), n = examples x height x width of the batch) and our BatchNorm the biased one, but in
inference both normalise with the stored number as it is, so copying it makes inference identical
(tests/test_pretrained.py: logits within 1e-4). Rescaling it would need the n the statistics were
gathered with, which a state dict does not record; the factor is below 1.001 for n >= 1000 (batch
32 at the 7x7 of the last stage is n = 1568), so a fine-tuning run that keeps averaging into the
copied statistics mixes two estimators that differ by less than 0.1%.

`num_batches_tracked` is not carried: it only drives PyTorch's cumulative average (momentum=None),
and torchvision uses momentum 0.1. `to_torchvision` writes it back as 0 (or the count you give), which
is what a torchvision model holds before any training step, so a state dict made by torchvision and
never trained round-trips bit for bit.
"""

import collections
from typing import Any, Iterator, Mapping, Optional

import jax
import numpy as np

from resnet_jax.models import registry, stages
from resnet_jax.run.errors import WeightsError

NAMES = tuple(f"resnet{d}" for d in registry.IMAGENET_DEPTHS)  # resnet18 ... resnet152
_BN_PARAMS = (("weight", "scale"), ("bias", "bias"))
_BN_STATS = (("running_mean", "mean"), ("running_var", "var"))


def _check_name(name: str) -> tuple[tuple[int, ...], bool]:
  if name not in NAMES:
    raise WeightsError(f"torchvision weights exist for {', '.join(NAMES)}; got {name!r}. (Plain nets, "
                     "CIFAR nets and VGG have no torchvision counterpart with our layer layout.)")
  return registry.IMAGENET_DEPTHS[int(name[len("resnet"):])]


def layers(name: str, head: bool = True) -> Iterator[tuple[str, tuple[str, ...], str]]:
  """(torchvision prefix, our module path, kind) for every layer, in torchvision's state-dict order.

  kind is "conv", "bn" or "dense".
  """
  sizes, bottleneck = _check_name(name)
  yield "conv1", ("stem_conv",), "conv"
  yield "bn1", ("stem_bn",), "bn"
  for i, size in enumerate(sizes):
    for j in range(size):
      theirs, ours = f"layer{i + 1}.{j}", f"stage{i + 1}_block{j + 1}"
      for k in range(1, 4 if bottleneck else 3):
        yield f"{theirs}.conv{k}", (ours, f"conv{k}"), "conv"
        yield f"{theirs}.bn{k}", (ours, f"bn{k}"), "bn"
      # Option B: a projection where the shape changes, i.e. the first block of every stage but the
      # first of a basic-block net (whose 64 -> 64 channels at stride 1 keep the identity).
      if j == 0 and (i > 0 or bottleneck):
        yield f"{theirs}.downsample.0", (ours, "proj_conv"), "conv"
        yield f"{theirs}.downsample.1", (ours, "proj_bn"), "bn"
  if head:
    yield "fc", ("head",), "dense"


def infer_name(state_dict: Mapping[str, Any]) -> str:
  """The torchvision ResNet a state dict belongs to, from its keys (blocks per stage, bottleneck)."""
  keys = set(_strip_prefix(state_dict))
  sizes = []
  for i in range(1, 5):
    j = 0
    while f"layer{i}.{j}.conv1.weight" in keys:
      j += 1
    sizes.append(j)
  return _match(tuple(sizes), "layer1.0.conv3.weight" in keys, "torchvision ResNet state dict")


def _name_of(params: Mapping[str, Any]) -> str:
  """The preset our (unrolled) params belong to, by the same rule as `infer_name`."""
  sizes = tuple(sum(1 for k in params if k.startswith(f"stage{i}_block")) for i in range(1, 5))
  bottleneck = "conv3" in params.get("stage1_block1", {})
  return _match(sizes, bottleneck, "ImageNet ResNet's variables")


def _match(sizes: tuple[int, ...], bottleneck: bool, what: str) -> str:
  for name in NAMES:
    if registry.IMAGENET_DEPTHS[int(name[len("resnet"):])] == (sizes, bottleneck):
      return name
  raise WeightsError(f"not a {what}: blocks per stage {sizes} of {'bottleneck' if bottleneck else 'basic'} "
                   f"blocks match none of {', '.join(NAMES)}.")


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict:
  # torch.nn.DataParallel and DistributedDataParallel save every key under "module.".
  keys = list(state_dict)
  if keys and all(k.startswith("module.") for k in keys):
    return {k[len("module."):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def _numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch.Tensor (duck-typed, so torch is not imported here)
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
      value = value.float()
    value = value.numpy()
  return np.asarray(value)


def _float32(value) -> np.ndarray:
  return np.array(_numpy(value), np.float32, order="C")  # a copy: never aliases the input


def from_torchvision(state_dict: Mapping[str, Any], name: Optional[str] = None, *, head: bool = True,
                     scan_blocks: bool = False) -> dict[str, dict]:
  """Our variables {"params", "batch_stats"} from a torchvision ResNet state dict.

  Args:
    state_dict: torchvision's `model.state_dict()` or a loaded file (`pretrained.load_state_dict`):
      NumPy arrays or CPU torch tensors; a "module." prefix (DataParallel) is dropped.
    name: resnet18/34/50/101/152; None = inferred from the keys. A name that does not match the keys
      is an error.
    head: False drops `fc` (for `get_model(name, num_classes=0)`, a backbone).
    scan_blocks: return the layout of `get_model(name, scan_blocks=True)` (`stages.to_scanned`).

  Returns:
    float32 NumPy arrays for `get_model(name, num_classes=fc's output size).apply(variables, x)`.
  """
  state_dict = _strip_prefix(state_dict)
  inferred = infer_name(state_dict)
  if name is not None and name != inferred:
    _check_name(name)
    raise WeightsError(f"the state dict is a {inferred} (by its blocks per stage), not a {name}.")
  name = inferred
  expected = set()
  params, batch_stats = {}, {}
  for theirs, path, kind in layers(name, head=head):
    def take(suffix, theirs=theirs):
      key = f"{theirs}.{suffix}"
      expected.add(key)
      if key not in state_dict:
        raise WeightsError(f"{name} state dict has no {key!r}.")
      return state_dict[key]

    if kind == "conv":
      leaf = {"kernel": _float32(take("weight")).transpose(2, 3, 1, 0)}
    elif kind == "dense":
      leaf = {"kernel": _float32(take("weight")).T, "bias": _float32(take("bias"))}
    else:
      leaf = {ours: _float32(take(t)) for t, ours in _BN_PARAMS}
      _set(batch_stats, path, {ours: _float32(take(t)) for t, ours in _BN_STATS})
      expected.add(f"{theirs}.num_batches_tracked")  # optional: not carried (module docstring)
    _set(params, path, {k: np.asarray(v, order="C") for k, v in leaf.items()})
  extra = sorted(k for k in state_dict if k not in expected and not (not head and k.startswith("fc.")))
  if extra:
    raise WeightsError(f"{len(extra)} key(s) of the state dict are not part of torchvision's {name}: "
                     f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}.")
  _check_shapes(name, params, batch_stats)
  if scan_blocks:
    params, batch_stats = stages.to_scanned(params), stages.to_scanned(batch_stats)
    # Writable NumPy, like the unrolled layout's arrays.
    params, batch_stats = jax.tree_util.tree_map(np.array, (dict(params), dict(batch_stats)))
  return {"params": params, "batch_stats": batch_stats}


def to_torchvision(variables: Mapping[str, Any], name: Optional[str] = None, *,
                   num_batches_tracked: int = 0) -> "collections.OrderedDict[str, np.ndarray]":
  """A torchvision ResNet state dict (NumPy arrays, torchvision's key order) from our variables.

  `torch.from_numpy` of each value loads into `torchvision.models.resnet50()` with
  `load_state_dict(..., strict=True)`; without a head (num_classes=0) the `fc` keys are left out
  (load with strict=False). Scanned layouts are unrolled first. `name` None = inferred.
  """
  params, batch_stats = (stages.unstack_scanned(dict(variables[c])) for c in ("params", "batch_stats"))
  name = _name_of(params) if name is None else name
  out = collections.OrderedDict()
  for theirs, path, kind in layers(name, head="head" in params):
    leaf = _get(params, path, name)
    if kind == "conv":
      out[f"{theirs}.weight"] = _float32(leaf["kernel"]).transpose(3, 2, 0, 1)
    elif kind == "dense":
      out[f"{theirs}.weight"] = _float32(leaf["kernel"]).T
      out[f"{theirs}.bias"] = _float32(leaf["bias"])
    else:
      stats = _get(batch_stats, path, name)
      for t, ours in _BN_PARAMS:
        out[f"{theirs}.{t}"] = _float32(leaf[ours])
      for t, ours in _BN_STATS:
        out[f"{theirs}.{t}"] = _float32(stats[ours])
      out[f"{theirs}.num_batches_tracked"] = np.array(num_batches_tracked, np.int64)
  return collections.OrderedDict((k, np.asarray(v, order="C")) for k, v in out.items())


def _set(tree: dict, path: tuple[str, ...], leaf: dict) -> None:
  for part in path[:-1]:
    tree = tree.setdefault(part, {})
  tree[path[-1]] = leaf


def _get(tree: Mapping, path: tuple[str, ...], name: str):
  for part in path:
    if part not in tree:
      raise WeightsError(f"variables have no {'/'.join(path)}: not a {name} (or not our layout).")
    tree = tree[part]
  return tree


def _check_shapes(name: str, params: dict, batch_stats: dict) -> None:
  """Every array has the shape our module declares (catches e.g. wide_resnet50_2's wider blocks,
  whose keys are resnet50's). Shapes come from `jax.eval_shape`: nothing is computed."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  num_classes = params["head"]["bias"].shape[0] if "head" in params else 0
  in_channels = params["stem_conv"]["kernel"].shape[2]
  model = registry.get_model(name, num_classes=num_classes)
  x = jax.ShapeDtypeStruct((1, 32, 32, in_channels), jnp.float32)
  want = jax.eval_shape(lambda r, x: model.init(r, x, train=False), jax.random.key(0), x)
  got = {"params": params, "batch_stats": batch_stats}
  flat_want = dict(jax.tree_util.tree_flatten_with_path(want)[0])
  for path, value in jax.tree_util.tree_flatten_with_path(got)[0]:
    shape = flat_want[path].shape if path in flat_want else None
    if shape != value.shape:
      where = "/".join(str(getattr(p, "key", p)) for p in path)
      raise WeightsError(f"{where} has shape {value.shape} in the state dict, but {name} expects "
                       f"{shape}: a different architecture (e.g. wide_resnet or resnext) with "
                       f"{name}'s layer names?")
