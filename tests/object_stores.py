"""Real object-store servers on 127.0.0.1 for the storage tests: a GCS server
(gcp-storage-emulator, pure Python) and an S3 server (moto's), each started as a
subprocess on a free port, with throwaway buckets, stopped at the end.

`env()` of a server is what a client process needs to talk to it: the clients' own
variables (STORAGE_EMULATOR_HOST for GCS; AWS_ENDPOINT_URL and dummy keys for S3).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      proc.log.seek(0)
      raise RuntimeError(f"object-store server exited with {proc.returncode}: "
                         f"{proc.log.read().decode(errors='replace')[-2000:]}")
    try:
      urllib.request.urlopen(url, timeout=2)
      return
    except urllib.error.HTTPError:  # It answers: up (a 4xx for an unsigned request).
      return
    except OSError:
      time.sleep(0.2)
  raise TimeoutError(f"object-store server at {url} did not answer in {timeout} s")


class Server:
  """A running object-store server; `bucket()` makes a new empty bucket."""

  def __init__(self, kind: str, proc: subprocess.Popen, url: str, env: dict):
    self.kind, self.proc, self.url, self._env = kind, proc, url, env

  def env(self) -> dict:
    return dict(self._env)

  def apply(self, environ=None) -> None:
    """Sets this server's client variables in `environ` (default os.environ)."""
    (os.environ if environ is None else environ).update(self._env)
    from bigvl import storage
    storage.configure_emulators(environ)

  def bucket(self) -> str:
    """A new bucket's URL (gs://NAME or s3://NAME)."""
    name = "t" + uuid.uuid4().hex[:12]
    if self.kind == "gcs":
      req = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                   data=f'{{"name": "{name}"}}'.encode(),
                                   headers={"Content-Type": "application/json"})
      urllib.request.urlopen(req, timeout=10).read()
      return f"gs://{name}"
    req = urllib.request.Request(f"{self.url}/{name}", method="PUT")
    urllib.request.urlopen(req, timeout=10).read()
    return f"s3://{name}"

  def stop(self) -> None:
    self.proc.terminate()
    try:
      self.proc.wait(10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
    self.proc.log.close()


def _start(cmd: list[str]) -> subprocess.Popen:
  # Its request log goes to a file: a pipe nobody reads fills up and blocks the server.
  log = tempfile.TemporaryFile()
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
  proc.log = log
  return proc


def _bin(name: str) -> str:
  found = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
  if not found:
    raise RuntimeError(f"{name} not found: install the test extra (pip install -e '.[test]').")
  return found


@contextlib.contextmanager
def gcs_server():
  """gcp-storage-emulator on a free port, in memory (through tests/gcs_emulator.py, which
  adds the generation header real GCS sends with an object's bytes)."""
  port = _free_port()
  launcher = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcs_emulator.py")
  proc = _start([sys.executable, launcher, "start", "--host", "127.0.0.1", "--port", str(port),
                 "--in-memory"])
  url = f"http://127.0.0.1:{port}"
  server = Server("gcs", proc, url, {"STORAGE_EMULATOR_HOST": url,
                                     "GOOGLE_CLOUD_PROJECT": "test"})
  try:
    _wait_http(url + "/storage/v1/b?project=test", proc)
    yield server
  finally:
    server.stop()


@contextlib.contextmanager
def s3_server():
  """moto's S3 server on a free port."""
  port = _free_port()
  proc = _start([_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)])
  url = f"http://127.0.0.1:{port}"
  server = Server("s3", proc, url, {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                                    "AWS_SECRET_ACCESS_KEY": "testing",
                                    "AWS_DEFAULT_REGION": "us-east-1"})
  try:
    _wait_http(url, proc)
    yield server
  finally:
    server.stop()
