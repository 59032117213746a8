"""Shared test helpers."""

import os
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_SIGLIP = os.path.join(REPO, "configs", "demo", "siglip_digits.py")
DEMO_CLIP = os.path.join(REPO, "configs", "demo", "clip_digits.py")

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for every run of the suite, subprocesses included (they
# inherit the variable): the demo's train step, run by dozens of tests, compiles once. A
# cache hit loads the same executable, so results are the same bit for bit.
# tests/test_compilation_cache.py turns it off to test the default location.
os.environ.setdefault("BIGVL_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), "bigvl-tests-compilation-cache"))

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
  long_kinds = ("slow", "demo", "scale", "colab")
  if kind == "unit" and any(any(item.iter_markers(name=m)) for m in long_kinds):
    raise ValueError(f"{item.nodeid}: slow, scale, demo and colab tests are integration "
                     "tests; mark it integration, not unit")
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


def missing_real_data(text: str) -> str | None:
  """The install command of the Debian package a demo named in `text` (a path, a command)
  reads, when that package's files are absent; None when present or none is needed."""
  from bigvl.data import fashion_mnist, tuxpaint
  for demo, source in (("fashion_mnist", fashion_mnist), ("tuxpaint", tuxpaint)):
    if demo in text and not os.path.isdir(source.resolve_dir()):
      return source.INSTALL
  return None


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


def call_main(module, args) -> int:
  """`module.main` of a bigvl CLI (bigvl.train, bigvl.eval) run in this process on `args`, as
  `python -m <module> ARGS` runs it; returns its exit status. absl's flags are reset after,
  so the next call parses its own."""
  from absl import flags
  try:
    return module.main([module.__name__, *map(str, args)])
  finally:
    flags.FLAGS.unparse_flags()


def save_run_without_training(config, workdir, steps=(1,)):
  """A workdir as a run of `config` leaves it, without training or compiling: its tokenizer
  (trained by building the run), config.json, and checkpoints at `steps`, each holding a train
  state of the run's shapes and shardings (random floats, zero integers). For what reads a
  run back (bigvl.eval, tools, init_from) in seconds. Returns (Run, that state)."""
  from bigvl import checkpoint, run as run_lib
  workdir.mkdir(parents=True, exist_ok=True)
  run = run_lib.build(config, str(workdir))
  (workdir / "config.json").write_text(run.config.to_json(indent=2))
  state = random_state(run)
  if steps:
    ckpt = checkpoint.Checkpointer(str(workdir), async_save=False)
    for step in steps:
      ckpt.save(step, state, run.config)
    ckpt.wait()
    ckpt.close()
  return run, state


def random_state(run):
  """A train state of `run`'s shapes, boxes and shardings, filled on the host (no jit): floats
  ~ N(0, 0.02), integers 0."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  shapes, shardings = run.abstract_state()
  rng = np.random.default_rng(0)

  def fill(sharding, x):
    box = x if isinstance(x, nn.meta.AxisMetadata) else None
    v = box.unbox() if box is not None else x
    if not hasattr(v, "shape"):  # optax.MaskedNode: a frozen param's absent optimizer state.
      return x
    floating = jnp.issubdtype(v.dtype, jnp.floating)
    host = (rng.normal(0, 0.02, v.shape) if floating else np.zeros(v.shape)).astype(v.dtype)
    array = jax.device_put(host, sharding)
    return box.replace_boxed(array) if box is not None else array

  return jax.tree.map(fill, shardings, shapes,
                      is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))


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
