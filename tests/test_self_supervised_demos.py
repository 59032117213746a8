"""The MAE demo learns features that a linear probe separates at least 10 points better
than those of the same encoder at its random init; the FLIP demo (SigLIP with half the
patches masked) still reaches zero-shot >= 0.85, and after its unmasked tuning phase too.
Acceptance 2 (MAE and DINO) and 4 of issue 8. The DINO demo's margin is smaller than MAE's
(12.2 points on seed 0; 8.3 and 15.3 on seeds 1 and 2; docs/self_supervised.md), and the
trained probe moves by a point or two with the machine's float rounding."""

import json
import os
import subprocess
import sys
import time

import pytest

from bigvl import metrics
from conftest import REPO, run_bigvl

pytestmark = pytest.mark.integration

DEMOS = os.path.join(REPO, "configs", "demo")


def _train(config, workdir, *args):
  t0 = time.time()
  run_bigvl(["--config", config, "--workdir", str(workdir), *args], check=True, timeout=1800)
  minutes = (time.time() - t0) / 60
  last = {}
  for r in metrics.read_jsonl(str(workdir / "metrics.jsonl")):
    last.update(r)
  return last, minutes


def _random_init(workdir):
  proc = subprocess.run([sys.executable, "-m", "bigvl.eval", "--workdir", str(workdir),
                         "--random_init"], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr
  with open(workdir / "eval_results" / "random_init.json") as f:
    return json.load(f)


@pytest.mark.demo
@pytest.mark.parametrize("demo", ["mae_digits", "dino_digits"])
def test_demo_linear_probe_beats_random_init_by_10_points(demo, tmp_path):
  last, minutes = _train(os.path.join(DEMOS, f"{demo}.py"), tmp_path)
  base = _random_init(tmp_path)
  print(f"{demo}: {minutes:.1f} min; linear {last['eval/probe/linear']:.4f} (random init "
        f"{base['eval/probe/linear']:.4f}), kNN {last['eval/knn/top1']:.4f} (random init "
        f"{base['eval/knn/top1']:.4f})")
  assert last["eval/probe/linear"] >= base["eval/probe/linear"] + 0.10
  assert minutes < 15


@pytest.mark.demo
def test_flip_demo_reaches_zero_shot_0_85_and_tunes_unmasked(tmp_path):
  masked = tmp_path / "masked"
  last, minutes = _train(os.path.join(DEMOS, "flip_digits.py"), masked)
  tuned = tmp_path / "tuned"
  tuned_last, tune_minutes = _train(os.path.join(DEMOS, f"flip_digits.py:init={masked}"), tuned)
  print(f"flip_digits: {minutes:.1f} min, zero-shot {last['eval/zeroshot_digits/top1']:.4f}; "
        f"after unmasked tuning ({tune_minutes:.1f} min) "
        f"{tuned_last['eval/zeroshot_digits/top1']:.4f}")
  assert last["eval/zeroshot_digits/top1"] >= 0.85
  assert tuned_last["eval/zeroshot_digits/top1"] >= 0.85
