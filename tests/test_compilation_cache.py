"""The persistent compilation cache (config.compilation_cache_dir): on by default in the
workdir's parent, so a second start of the same config loads its train step instead of
compiling it.

The signal is jax's own: the loop counts jax's `/jax/compilation_cache/cache_hits` events
during the step's compilation and says "cache hit" / "cache miss" in its log, with the
seconds it took. Two 2-step runs of the SigLIP demo in subprocesses, ~50-100 s in all on 2
shared cores (measured: compile 15.9 s first, 2.8 s second, lowering included; whole run
42 s vs 14 s).
"""

import os
import re

import jax
import pytest

from conftest import DEMO_SIGLIP, run_bigvl
from bigvl import config_lib, train

COMPILED = re.compile(r"compiled the train step in ([\d.]+)s \(persistent compilation cache "
                      r"(hit|miss|off)")


# The suite's shared cache (conftest.py) off: these tests are about the default location.
NO_SUITE_CACHE = {"BIGVL_COMPILATION_CACHE_DIR": ""}


def _args(workdir, *extra):
  return ["--config", DEMO_SIGLIP, "--workdir", str(workdir), "--config.total_steps=2",
          "--config.evals={}", "--config.log_every=1", *extra]


def _compiled(proc) -> tuple[float, str]:
  found = COMPILED.findall(proc.stdout)
  assert len(found) == 1, proc.stdout[-3000:]
  return float(found[0][0]), found[0][1]


@pytest.mark.integration
@pytest.mark.slow  # Two starts of the demo (about 35 s).
def test_second_start_loads_the_train_step_from_the_cache(tmp_path):
  # Two workdirs side by side: the default cache is their parent's, shared by both.
  first = run_bigvl(_args(tmp_path / "a"), env=NO_SUITE_CACHE, check=True)
  cache = tmp_path / train.CACHE_DIR_NAME
  entries = sorted(p.name for p in cache.iterdir())
  assert any(name.startswith("jit_train_step") for name in entries), entries
  second = run_bigvl(_args(tmp_path / "b"), env=NO_SUITE_CACHE, check=True)
  (s1, how1), (s2, how2) = _compiled(first), _compiled(second)
  print(f"train step compile: first start {s1:.2f}s ({how1}), second {s2:.2f}s ({how2}); "
        f"cache entries: {entries}")
  assert (how1, how2) == ("miss", "hit")
  assert str(cache) in second.stdout
  assert sorted(p.name for p in cache.iterdir()) == entries  # Nothing new was compiled.
  assert s2 < s1


@pytest.mark.unit
def test_no_dir_turns_the_cache_off(tmp_path):
  with train.compilation_cache(None), train.CacheHits() as hits:
    jax.jit(lambda x: x * 2).lower(jax.ShapeDtypeStruct((3,), "float32")).compile()
  assert hits.hits == 0 and hits.describe() == "persistent compilation cache off"


@pytest.mark.unit
def test_cache_dir_option(monkeypatch):
  monkeypatch.delenv(train.CACHE_DIR_ENV, raising=False)
  c = config_lib.load_config_file(DEMO_SIGLIP)
  assert train.compilation_cache_dir(c, "/runs/siglip") == "/runs/.bigvl_compilation_cache"
  assert train.compilation_cache_dir(c, "/runs/siglip/") == "/runs/.bigvl_compilation_cache"
  c.compilation_cache_dir = ""
  assert train.compilation_cache_dir(c, "/runs/siglip") is None
  c.compilation_cache_dir = "/cache/bigvl"
  assert train.compilation_cache_dir(c, "/runs/siglip") == "/cache/bigvl"


@pytest.mark.unit
def test_cache_settings_are_restored(tmp_path):
  before = jax.config.jax_compilation_cache_dir
  with train.compilation_cache(str(tmp_path / "cache")) as path:
    assert jax.config.jax_compilation_cache_dir == path == str(tmp_path / "cache")
    assert os.path.isdir(path)
  assert jax.config.jax_compilation_cache_dir == before


@pytest.mark.unit
def test_the_environment_variable_moves_auto_only(monkeypatch):
  c = config_lib.load_config_file(DEMO_SIGLIP)
  monkeypatch.setenv(train.CACHE_DIR_ENV, "/shared/cache")
  assert train.compilation_cache_dir(c, "/runs/siglip") == "/shared/cache"
  assert train.compilation_cache_dir(c, "gs://bucket/run") == "/shared/cache"
  c.compilation_cache_dir = ""  # An explicit value wins over the environment.
  assert train.compilation_cache_dir(c, "/runs/siglip") is None
  c.compilation_cache_dir = "/cache/bigvl"
  assert train.compilation_cache_dir(c, "/runs/siglip") == "/cache/bigvl"
  monkeypatch.setenv(train.CACHE_DIR_ENV, "")  # Empty: unset.
  c.compilation_cache_dir = "auto"
  assert train.compilation_cache_dir(c, "/runs/siglip") == "/runs/.bigvl_compilation_cache"
