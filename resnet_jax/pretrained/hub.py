"""torchvision's published ResNet weights: their URLs, a checksummed download, a local cache.

torchvision names each file `<arch>-<first hex digits of its SHA-256>.pth`, and torch.hub checks a
download against that prefix (`check_hash=True`); we check the same prefix, before a file enters the
cache and again each time a cached file is used. (A prefix of 8 hex digits catches corruption and
truncation; it is not a defence against a deliberately forged file.) Files already in torch.hub's own
cache are used from there, after the same check.
"""

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request

from resnet_jax.run import process
from resnet_jax.run.errors import WeightsError

_BASE = "https://download.pytorch.org/models/"
# torchvision 0.29, torchvision/models/resnet.py (ResNet*_Weights); DEFAULT as torchvision's.
TORCHVISION_WEIGHTS = {
    "resnet18": {"IMAGENET1K_V1": _BASE + "resnet18-f37072fd.pth"},
    "resnet34": {"IMAGENET1K_V1": _BASE + "resnet34-b627a593.pth"},
    "resnet50": {"IMAGENET1K_V1": _BASE + "resnet50-0676ba61.pth",
                 "IMAGENET1K_V2": _BASE + "resnet50-11ad3fa6.pth"},
    "resnet101": {"IMAGENET1K_V1": _BASE + "resnet101-63fe2227.pth",
                  "IMAGENET1K_V2": _BASE + "resnet101-cd907fc2.pth"},
    "resnet152": {"IMAGENET1K_V1": _BASE + "resnet152-394f9c45.pth",
                  "IMAGENET1K_V2": _BASE + "resnet152-f82ba261.pth"},
}
_DEFAULT = {"resnet18": "IMAGENET1K_V1", "resnet34": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V2",
            "resnet101": "IMAGENET1K_V2", "resnet152": "IMAGENET1K_V2"}
# torch.hub's HASH_REGEX: the hex digits between the last "-" and the suffix.
_HASH = re.compile(r"-([a-f0-9]+)\.")
_CHUNK = 1 << 20


class DownloadError(WeightsError):
  """A URL could not be fetched, or what it gave failed its checksum."""


def weights_url(name: str, weights: str = "DEFAULT") -> str:
  """The URL of torchvision's `weights` (IMAGENET1K_V1, IMAGENET1K_V2 or DEFAULT) for `name`."""
  if name not in TORCHVISION_WEIGHTS:
    raise WeightsError(f"torchvision publishes ResNet weights for {', '.join(TORCHVISION_WEIGHTS)}; "
                     f"got {name!r}.")
  weights = _DEFAULT[name] if weights == "DEFAULT" else weights
  if weights not in TORCHVISION_WEIGHTS[name]:
    raise WeightsError(f"torchvision has no {weights} weights for {name}; it has "
                     f"{', '.join(['DEFAULT', *TORCHVISION_WEIGHTS[name]])}.")
  return TORCHVISION_WEIGHTS[name][weights]


def cache_dir() -> str:
  """$RESNET_JAX_CACHE/weights, else $XDG_CACHE_HOME/resnet_jax/weights (~/.cache/...)."""
  return os.path.join(process.cache_root(), "weights")


def _torch_hub_dir() -> str:
  root = os.environ.get("TORCH_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
  return os.path.join(root, "hub", "checkpoints")


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def expected_hash(url: str, sha256: str | None = None) -> str:
  """The hex prefix a download must start with: `sha256` if given, else the one in the file name."""
  if sha256:
    return sha256.lower()
  m = _HASH.search(os.path.basename(url))
  if not m:
    raise WeightsError(f"{url}: the file name carries no checksum (torchvision's are "
                     "<name>-<sha256 prefix>.pth); pass sha256=... to download it.")
  return m.group(1)


def download(url: str, cache: str | None = None, sha256: str | None = None) -> str:
  """The local path of `url`'s file, downloaded into `cache` (default `cache_dir()`) if not there.

  The file's SHA-256 must start with `expected_hash(url, sha256)`. A download that fails the check
  is deleted (nothing enters the cache); a cached file that fails it is deleted and fetched again.
  http(s) and file URLs are accepted.
  """
  want = expected_hash(url, sha256)
  cache = cache or cache_dir()
  filename = os.path.basename(urllib.request.url2pathname(url.split("?")[0].rstrip("/")))
  target = os.path.join(cache, filename)
  for candidate in (target, os.path.join(_torch_hub_dir(), filename)):
    if os.path.isfile(candidate):
      if _sha256(candidate).startswith(want):
        return candidate
      if candidate == target:  # our own cache: replace the bad copy; torch's we leave alone
        os.remove(candidate)
  os.makedirs(cache, exist_ok=True)
  # Written beside its final name and renamed only once it checks out, so a failed or interrupted
  # download never leaves a file under that name.
  fd, partial = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=cache)
  try:
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
      try:
        with urllib.request.urlopen(url, timeout=60) as response:
          for chunk in iter(lambda: response.read(_CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
      except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"could not download {url}: {e}. Without network, fetch the file "
                            "elsewhere and pass its path instead of the URL or weights name.") from e
    got = digest.hexdigest()
    if not got.startswith(want):
      raise DownloadError(f"{url}: checksum mismatch: SHA-256 {got} does not start with {want}. The "
                          "download is corrupt or not the published file; it was deleted.")
    os.replace(partial, target)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return target
