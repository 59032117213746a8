"""The one registry convention: five registries in bigvl/registry.py, each importing its list
of implementation modules on first use; every config section names its factory with `name`.
"""

import os
import pkgutil
import subprocess
import sys
import textwrap

import pytest

from bigvl import registry
from bigvl.registry import EVALUATORS, MODELS, OBJECTIVES, PP_OPS, SOURCES, Registry
from conftest import REPO


def _python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.integration
def test_each_registry_resolves_a_name_from_a_fresh_interpreter():
  # One fresh interpreter per registry: nothing imported but bigvl.registry beforehand.
  for reg, name, attr in (("MODELS", "vit", "ViT"), ("OBJECTIVES", "siglip", "Siglip"),
                          ("EVALUATORS", "zeroshot", "ZeroShot"), ("SOURCES", "digits", "Digits"),
                          ("PP_OPS", "each_image", "each_image")):
    proc = _python(f"from bigvl.registry import {reg}; print({reg}.get({name!r}).__name__)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == attr, (reg, proc.stdout)


@pytest.mark.unit
def test_registries_are_the_ones_the_families_use():
  from bigvl import evaluators, models, objectives
  from bigvl.data import sources, transforms
  assert models.MODELS is MODELS and objectives.OBJECTIVES is OBJECTIVES
  assert evaluators.EVALUATORS is EVALUATORS and sources.SOURCES is SOURCES
  assert transforms.PP_OPS is PP_OPS
  assert {"vit", "two_towers", "dino"} <= set(MODELS.names())
  assert {"clip", "siglip", "dino"} <= set(OBJECTIVES.names())
  assert {"digits", "shapes", "tfds", "interleaved", "folder", "shards"} <= set(SOURCES.names())
  assert {"resize", "tokenize", "each_image", "interleave_text"} <= set(PP_OPS.names())


@pytest.mark.unit
def test_old_source_key_is_a_one_line_error_naming_the_fix():
  from bigvl.data import sources
  with pytest.raises(ValueError) as e:
    sources.build(dict(source="digits", split="train"))
  msg = str(e.value)
  assert "\n" not in msg
  assert "config.data.train has 'source': the key is 'name' now; write name='digits'" in msg
  # The old TFDS form also had the dataset under 'name': the message says where it went.
  with pytest.raises(ValueError, match="write name='tfds'.*'dataset'"):
    sources.build(dict(source="tfds", name="mnist", split="train"))


@pytest.mark.unit
def test_old_eval_keys_are_one_line_errors_naming_the_fix():
  from bigvl import evaluators
  ctx = evaluators.EvalContext(model=None, tokenizer=None, text_len=16, mesh=None, rules=None)
  with pytest.raises(ValueError) as e:
    evaluators.build("zs", dict(type="zeroshot", data=dict(name="digits")), ctx)
  assert "\n" not in str(e.value)
  assert "config.evals.zs has 'type': the key is 'name' now; write name='zeroshot'" in str(e.value)
  with pytest.raises(ValueError) as e:
    evaluators.build("zs", dict(name="zeroshot", source="digits", split="test", pp="keep"), ctx)
  msg = str(e.value)
  assert "\n" not in msg
  assert "config.evals.zs has 'source', 'split', 'pp'" in msg
  assert "data=dict(name='digits'" in msg
  with pytest.raises(ValueError, match=r"config.evals.zs.data has 'source'.*name='digits'"):
    evaluators.build("zs", dict(name="zeroshot", data=dict(source="digits")), ctx)
  with pytest.raises(ValueError, match=r"config.evals.zs.data is not set"):
    evaluators.build("zs", dict(name="zeroshot"), ctx)


@pytest.mark.unit
def test_missing_name_lists_the_valid_names():
  from bigvl import evaluators, models, objectives
  from bigvl.data import sources
  for build, valid in ((lambda: models.build(dict(width=3)), "config.model.name.*two_towers"),
                       (lambda: objectives.build(dict()), "config.objective.name.*siglip"),
                       (lambda: sources.build(dict(split="train")),
                        "config.data.train.name.*digits"),
                       (lambda: evaluators.build("e", dict(every=5), None),
                        "config.evals.e.name.*zeroshot")):
    with pytest.raises(ValueError, match=valid):
      build()


@pytest.mark.unit
def test_build_from_config_passes_the_rest_and_names_unknown_options():
  reg = Registry("widget")

  @reg.register("box")
  def box(size: int, colour: str = "red"):
    return (size, colour)

  assert reg.build_from_config({"name": "box", "size": 3}, where="config.w") == (3, "red")
  assert reg.build_from_config({"name": "box"}, where="config.w", size=2) == (2, "red")
  with pytest.raises(ValueError, match=r"Unknown option 'color'.*config\.w.*'colour'"):
    reg.build_from_config({"name": "box", "size": 1, "color": "b"}, where="config.w")
  with pytest.raises(ValueError, match=r"config.w sets \['size'\], which bigvl fills in"):
    reg.build_from_config({"name": "box", "size": 1}, where="config.w", size=2)
  with pytest.raises(ValueError, match="config.w.name is not set.*box"):
    reg.build_from_config({"size": 1}, where="config.w")


@pytest.mark.unit
def test_module_attribute_names_still_work(tmp_path, monkeypatch):
  (tmp_path / "my_sources.py").write_text(textwrap.dedent('''
      class Three:
        def __init__(self, split="train"):
          self.split = split
        def __len__(self):
          return 3
        def __getitem__(self, i):
          return {"label": i}
  '''))
  monkeypatch.syspath_prepend(str(tmp_path))
  from bigvl.data import sources
  src = sources.build(dict(name="my_sources:Three", split="test", pp="keep('label')"))
  assert len(src) == 3 and src.split == "test"
  assert MODELS.get("bigvl.models.vit:ViT") is MODELS.get("vit")
  with pytest.raises(ValueError, match="has no attribute 'Nope'"):
    OBJECTIVES.get("bigvl.objectives.contrastive:Nope")


@pytest.mark.unit
def test_a_registry_loads_its_implementations_once_and_lazily(tmp_path, monkeypatch):
  (tmp_path / "my_impls.py").write_text(textwrap.dedent('''
      import my_registry
      LOADS = getattr(my_registry, "LOADS", 0) + 1
      my_registry.LOADS = LOADS
      @my_registry.REG.register("thing")
      def thing():
        return "made"
  '''))
  (tmp_path / "my_registry.py").write_text(
      "from bigvl.registry import Registry\nREG = Registry('thing', implementations='my_impls')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  import my_registry
  assert "my_impls" not in sys.modules  # Nothing imported before the first use.
  assert my_registry.REG.build("thing") == "made"
  assert my_registry.REG.names() == ["thing"] and my_registry.LOADS == 1


def _bigvl_modules() -> list[str]:
  import bigvl
  return sorted(m.name for m in pkgutil.walk_packages(bigvl.__path__, "bigvl."))


# Imported once before forking, so that each child pays only for bigvl's own modules.
_PRELOAD = ("numpy", "jax", "jax.numpy", "flax.linen", "optax", "grain", "orbax.checkpoint",
            "ml_collections", "absl.flags", "PIL.Image")

_FORK_IMPORTS = textwrap.dedent('''
    import importlib, os, sys, traceback, warnings
    warnings.simplefilter("ignore")
    for m in {preload!r}:
      try:
        importlib.import_module(m)
      except ImportError:
        pass
    assert not [m for m in sys.modules if m == "bigvl" or m.startswith("bigvl.")]
    failed = []
    for name in {modules!r}:
      r, w = os.pipe()
      pid = os.fork()
      if pid == 0:  # A fresh bigvl: the child has imported none of it.
        os.close(r)
        try:
          importlib.import_module(name)
          msg = b""
        except BaseException:
          msg = traceback.format_exc().encode()[-3000:]
        os.write(w, msg)
        os._exit(0)
      os.close(w)
      with os.fdopen(r, "rb") as f:
        msg = f.read().decode()
      os.waitpid(pid, 0)
      if msg:
        failed.append(name + ":\\n" + msg)
    print("\\n".join(failed))
    sys.exit(1 if failed else 0)
''')


@pytest.mark.integration
@pytest.mark.slow  # Over 10 s on 2 cores: the default suite stays under 10 minutes.
def test_every_bigvl_module_imports_on_its_own():
  """Each module imported first thing in a fresh bigvl (no import circle makes one fail)."""
  modules = _bigvl_modules()
  assert "bigvl.data.digits" in modules and "bigvl.registry" in modules
  if not hasattr(os, "fork"):
    pytest.skip("needs os.fork")
  proc = _python(_FORK_IMPORTS.format(preload=_PRELOAD, modules=modules), timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.unit
def test_implementation_modules_register_through_bigvl_registry():
  """A module with `@X.register(...)` takes X from bigvl.registry and never imports X's list
  module (the import circle the lazy load replaces)."""
  import re
  lists = {"MODELS": "bigvl.models", "OBJECTIVES": "bigvl.objectives",
           "EVALUATORS": "bigvl.evaluators", "SOURCES": "bigvl.data.sources",
           "PP_OPS": "bigvl.data.pp_ops"}
  seen = set()
  for root, _, files in os.walk(os.path.join(REPO, "bigvl")):
    for fname in files:
      if not fname.endswith(".py") or fname == "registry.py":
        continue
      text = open(os.path.join(root, fname)).read()
      for reg, listing in lists.items():
        if not re.search(rf"^@{reg}\.register\(", text, re.M):
          continue
        seen.add(reg)
        assert re.search(rf"^from bigvl\.registry import .*\b{reg}\b", text, re.M), (fname, reg)
        package, _, leaf = listing.rpartition(".")
        assert not re.search(rf"^(import {re.escape(listing)}\b|from {re.escape(package)} "
                             rf"import .*\b{leaf}\b)", text, re.M), (fname, listing)
        assert f"from {listing} import {reg}" not in text, fname
  assert seen == set(lists)
  assert getattr(registry, "SOURCES").implementations == "bigvl.data.sources"
