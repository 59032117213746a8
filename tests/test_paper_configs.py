"""Every paper config under configs/ (outside configs/demo/): it loads and its run builds at
the paper's size (abstract state: nothing allocated, no data read), and its `:smoke` arg
trains 3 steps on CPU on the synthetic stand-in data.

Files named *_common.py are a family's shared builder, not a setting: they are exercised
through the setting files that import them.
"""

import glob
import json
import math
import os

import pytest

from bigvl import config_lib, plan as plan_lib, recipes, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def paper_configs() -> list[str]:
  """configs/<family>/<setting>.py, relative to the repo root, sorted."""
  out = []
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.py"))):
    rel = os.path.relpath(path, ROOT)
    if rel.startswith(os.path.join("configs", "demo")) or rel.endswith("_common.py"):
      continue
    out.append(rel)
  return out


CONFIGS = paper_configs()
# Args that make a default config loadable without the user's data: the shards' directory.
BUILD_ARG = "data_dir=/nonexistent/shards"


def _load(rel: str, arg: str) -> config_lib.ConfigDict:
  return config_lib.load_config_file(os.path.join(ROOT, rel) + ":" + arg)


@pytest.fixture(scope="module")
def shared_compilation_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("compilation_cache"))


@pytest.mark.unit
def test_there_are_paper_configs():
  families = {p.split(os.sep)[1] for p in CONFIGS}
  assert {"siglip", "clip", "lit", "flip", "coca", "cappa", "mae", "simmim", "dino", "vit",
          "flamingo"} <= families, families


@pytest.mark.unit
@pytest.mark.parametrize("rel", CONFIGS)
def test_paper_config_builds_at_full_size(rel):
  """The paper-size run builds (model, objective, optimizer, shardings) from its stand-in."""
  config = _load(rel, BUILD_ARG)
  notes = []
  config = plan_lib.planning_config(config_lib.with_defaults(config), notes)
  from bigvl import run as run_lib, state as state_lib
  run = run_lib.build(config, None)
  shapes, _ = run.abstract_state()
  n = state_lib.param_count(shapes.params)
  assert n > 1e6, (rel, n)  # A paper model, not the smoke one.
  assert config.total_steps > 100 and config.batch_size >= 256


@pytest.mark.integration
@pytest.mark.slow  # About 30 s a config on 2 cores (compiles): CI runs them all.
@pytest.mark.parametrize("rel", CONFIGS)
def test_paper_config_smoke_trains_3_steps(rel, tmp_path, shared_compilation_cache):
  config = _load(rel, "smoke")
  # Settings of one family share their smoke program: compiled once for all of them.
  config.compilation_cache_dir = shared_compilation_cache
  metrics = train.train_and_evaluate(config, str(tmp_path / "wd"))
  rows = [json.loads(line) for line in open(tmp_path / "wd" / "metrics.jsonl")]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) == recipes.SMOKE_STEPS, rows
  assert all(math.isfinite(x) for x in losses), losses
  assert metrics is not None


@pytest.mark.integration
@pytest.mark.parametrize("rel,arg", [("configs/mae/finetune_b16.py", "init"),
                                     ("configs/flamingo/gpt2.py", "lm")])
def test_a_required_arg_left_out_stops_training_in_one_line(rel, arg, tmp_path):
  """The config builds and plans without its weights (above); the train CLI refuses it in
  one line naming the arg, before creating the workdir."""
  import subprocess
  import sys
  workdir = tmp_path / "wd"
  proc = subprocess.run([sys.executable, "-m", "bigvl.train", "--config",
                         f"{rel}:data_dir=/nonexistent/shards", "--workdir", str(workdir)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert f"give the config arg {arg}=" in errors[0], errors[0]
  assert not workdir.exists()
  assert recipes.missing_args(_load(rel, "smoke")) == []  # Smoke runs need none.


@pytest.mark.integration
@pytest.mark.slow  # Two short trainings (about 40 s on 2 cores).
def test_dino_linprobe_loads_the_teacher_backbone_and_trains_only_the_head(tmp_path):
  """configs/dino/linprobe_s16.py's init_subtree finds the teacher in a DINO run's checkpoint:
  every backbone param loads, only the head is new, and only the head changes."""
  import subprocess
  import sys
  import numpy as np
  from bigvl import checkpoint
  pre, lin = tmp_path / "dino", tmp_path / "linear"
  run = lambda *a: subprocess.run([sys.executable, "-m", "bigvl.train", *a], cwd=ROOT,
                                  capture_output=True, text=True, timeout=600)
  p = run("--config", "configs/dino/s16.py:smoke", "--workdir", str(pre))
  assert p.returncode == 0, p.stderr[-2000:]
  p = run("--config", "configs/dino/linprobe_s16.py:smoke", f"--config.init_from={pre}",
          "--config.init_subtree=objective_state/teacher/student/backbone",
          "--workdir", str(lin))
  assert p.returncode == 0, p.stderr[-2000:]
  line = next(l for l in p.stdout.splitlines() if l.startswith("Initialised params"))
  assert ", 2 new, 0 shape-mismatched" in line and " 0 dropped" in line, line
  teacher = checkpoint.subtree(checkpoint.load_params(str(pre), objective_state=True),
                               "objective_state/teacher/student/backbone")
  after = checkpoint.load_params(str(lin))
  assert set(after) - set(teacher) == {"head/kernel", "head/bias"}
  for k, v in teacher.items():   # Frozen: the backbone is still the teacher's.
    np.testing.assert_array_equal(after[k], v, err_msg=k)
