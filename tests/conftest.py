"""Shared test helpers."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_SIGLIP = os.path.join(REPO, "configs", "demo", "siglip_digits.py")
DEMO_CLIP = os.path.join(REPO, "configs", "demo", "clip_digits.py")

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Every test declares its kind (pyproject.toml registers the markers): `unit` (in-process,
# pure functions and small modules, seconds) or `integration` (subprocess or training runs,
# several processes or devices, anything over ~10 s; every slow and demo test). A module
# of one kind says so once, `pytestmark = pytest.mark.unit`; in a module of both kinds each
# test carries its own mark (`-m` sees a module's marks on every test, so a test cannot
# override them).
KINDS = ("unit", "integration")


def kind_of(item) -> str:
  """A collected test's kind, "unit" or "integration"; ValueError naming the test if it has
  none, both, or is a slow/demo test marked unit."""
  kinds = {m.name for m in item.iter_markers() if m.name in KINDS}
  if not kinds:
    raise ValueError(f"{item.nodeid}: no kind; mark the module `pytestmark = pytest.mark.unit` "
                     "(in-process, seconds) or `pytest.mark.integration` (subprocess, training, "
                     "several processes, over ~10 s), or each test where a module has both")
  if len(kinds) > 1:
    raise ValueError(f"{item.nodeid}: marked both unit and integration (a module-level "
                     "`pytestmark` applies to every test in it)")
  kind = kinds.pop()
  if kind == "unit" and any(any(item.iter_markers(name=m)) for m in ("slow", "demo", "scale")):
    raise ValueError(f"{item.nodeid}: slow, scale and demo tests are integration tests; mark it "
                     "integration, not unit")
  return kind


@pytest.hookimpl(tryfirst=True)  # Before `-m` deselects: every collected test must have a kind.
def pytest_collection_modifyitems(config, items):
  errors = []
  for item in items:
    try:
      kind_of(item)
    except ValueError as e:
      errors.append(str(e))
  if errors:
    raise pytest.UsageError("tests without a valid kind (see tests/conftest.py):\n  "
                            + "\n  ".join(errors))


def load_tool(name):
  """tools/<name>.py imported as a module (tools/ is not a package)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_bigvl(args, *, env=None, timeout=600, check=False):
  """Runs `python -m bigvl.train ARGS` in a subprocess; returns the CompletedProcess."""
  full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
  proc = subprocess.run([sys.executable, "-m", "bigvl.train", *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"bigvl.train failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


@pytest.fixture
def demo_config():
  """The SigLIP demo config, loaded as the CLI loads it, shrunk for fast tests."""
  from bigvl import config_lib

  def make(spec=DEMO_SIGLIP, **overrides):
    config = config_lib.load_config_file(spec)
    config.evals = {}
    for k, v in overrides.items():
      node = config
      *parents, leaf = k.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = v
    return config
  return make


@pytest.fixture(scope="session")
def gcs_server():
  """A GCS server (gcp-storage-emulator) on 127.0.0.1 for this test session
  (tests/object_stores.py); its client variables are set in os.environ while it runs."""
  import object_stores
  with object_stores.gcs_server() as server:
    with _env_while(server):
      yield server


@pytest.fixture(scope="session")
def s3_server():
  """An S3 server (moto) on 127.0.0.1 for this test session; its client variables are set
  in os.environ while it runs."""
  import object_stores
  with object_stores.s3_server() as server:
    with _env_while(server):
      yield server


class _env_while:
  """Sets a server's client variables (and what bigvl.storage derives from them) in
  os.environ, and restores the previous values after."""

  def __init__(self, server):
    self.server = server

  def __enter__(self):
    self.saved = dict(os.environ)
    self.server.apply()

  def __exit__(self, *exc):
    os.environ.clear()
    os.environ.update(self.saved)
