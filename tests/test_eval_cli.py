"""`python -m bigvl.eval`, TensorBoard event files and the model card of a finished run."""

import json
import os
import subprocess
import sys

import pytest

from bigvl import metrics
from conftest import DEMO_SIGLIP, REPO, run_bigvl

# A training run and three eval processes: about a minute and a half.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("siglip")
  run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(workdir), "--config.total_steps=120",
             "--config.eval_every=60", "--config.checkpoint_every=60", "--config.log_every=20"],
            check=True)
  return workdir


def _eval(*args):
  return subprocess.run([sys.executable, "-m", "bigvl.eval", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def test_eval_cli_reproduces_the_numbers_logged_in_training(run_dir):
  """Acceptance: bigvl.eval on the demo's checkpoint gives the eval numbers of that step."""
  logged = {r["step"]: r for r in metrics.read_jsonl(str(run_dir / "metrics.jsonl"))
            if "eval/zeroshot_digits/top1" in r}
  assert set(logged) == {60, 120}
  for step, args in ((120, []), (60, ["--checkpoint=60"])):
    proc = _eval("--workdir", str(run_dir), *args)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((run_dir / "eval_results" / f"step_{step}.json").read_text())
    assert saved["step"] == step
    for key in ("eval/zeroshot_digits/top1", "eval/zeroshot_digits/top5"):
      assert saved[key] == logged[step][key], (step, key)
  missing = _eval("--workdir", str(run_dir), "--checkpoint=7")
  assert missing.returncode == 1 and "No checkpoint for step 7" in missing.stderr
  assert "[60, 120]" in missing.stderr


def test_tensorboard_event_files_hold_the_scalars(run_dir):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"))
  acc.Reload()
  tags = acc.Tags()["scalars"]
  assert {"train/loss", "train/lr", "eval/zeroshot_digits/top1"} <= set(tags)
  rows = metrics.read_jsonl(str(run_dir / "metrics.jsonl"))
  want = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
  got = {e.step: e.value for e in acc.Scalars("train/loss")}
  assert sorted(got) == sorted(want) == [20, 40, 60, 80, 100, 120]
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=1e-6)


def test_model_card_names_the_run_its_metrics_and_commands(run_dir):
  card = (run_dir / "README.md").read_text()
  rows = metrics.read_jsonl(str(run_dir / "metrics.jsonl"))
  top1 = [r for r in rows if "eval/zeroshot_digits/top1" in r][-1]["eval/zeroshot_digits/top1"]
  assert "two_towers trained with siglip" in card
  assert f"| `eval/zeroshot_digits/top1` | {top1:.4f} |" in card
  assert f"python -m bigvl.eval --workdir {run_dir}" in card
  assert "steps: 120" in card and "digits" in card
  # The card's convert command runs as written, from the repository root.
  line = next(l for l in card.splitlines() if "convert_checkpoint.py from_workdir" in l)
  assert line.startswith("python ")   # With the project's environment active, as documented.
  proc = subprocess.run(sys.executable + line[len("python"):], shell=True, cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert os.path.exists(f"{run_dir}_converted/params")
