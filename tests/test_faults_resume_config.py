"""Fault: resuming a workdir with another config (issue 18, item 1).

A workdir with checkpoints is resumed only by the run its config.json describes. Another
model, objective, seed, batch or schedule is refused before anything is written (the
workdir's files stay byte for byte), with every changed key, old -> new, and the ways out;
`config.allow_changes` lets a named key through; keys that change no number (logging,
evaluation cadence) pass with a note. A readable checkpoint of another model is never
taken for a damaged one.
"""

import pytest

from conftest import DEMO_SIGLIP, load_tool, run_bigvl
from test_reliability import FAST

pytestmark = [pytest.mark.faults, pytest.mark.integration]

ARGS = ["--config", DEMO_SIGLIP, "--config.total_steps=20", *FAST]
tree_hash = load_tool("fault_drill").tree_hash  # Hash of every file's path and bytes.


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("trained")
  run_bigvl([*ARGS, "--workdir", str(workdir)], check=True)
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("override, key, old, new", [
    ("--config.model.image.width=128", "model.image.width", "64", "128"),
    ("--config.batch_size=32", "batch_size", "64", "32"),
    ("--config.seed=1", "seed", "0", "1"),
    ("--config.objective={'name': 'clip'}", "objective.name", '"siglip"', '"clip"'),
    ("--config.total_steps=30", "total_steps", "20", "30"),
])
def test_a_changed_config_is_refused_and_the_workdir_is_unchanged(trained, override, key, old,
                                                                   new):
  before = tree_hash(trained)
  proc = run_bigvl([*ARGS, "--workdir", str(trained), override])
  assert proc.returncode == 1, proc.stdout + proc.stderr
  error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(error) == 1, proc.stderr
  assert "holds checkpoints of another run" in error[0]
  assert f"{key}: {old} -> {new}" in error[0], error[0]
  assert "new --workdir" in error[0] and "--config.allow_changes=" in error[0]
  assert "Traceback" not in proc.stderr
  assert tree_hash(trained) == before


@pytest.mark.slow
def test_allowed_and_free_changes_resume(trained, tmp_path):
  import shutil
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  proc = run_bigvl([*ARGS, "--workdir", str(workdir), "--config.total_steps=30",
                    "--config.log_every=5", "--config.allow_changes=total_steps"], check=True)
  assert "Resumed from checkpoint step 20" in proc.stdout
  assert "total_steps: 20 -> 30" in proc.stdout and "log_every: 1 -> 5" in proc.stdout


@pytest.mark.slow
def test_another_models_checkpoint_is_not_taken_for_damaged(trained):
  before = tree_hash(trained)
  proc = run_bigvl([*ARGS, "--workdir", str(trained), "--config.model.image.width=128",
                    "--config.allow_changes=model.image.width"])
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert "holds another model's arrays" in proc.stderr and "left as it is" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (trained / "corrupt_checkpoints").exists()
  assert tree_hash(trained) == before
