"""The Fashion-MNIST SigLIP demo (configs/demo/siglip_fashion_mnist.py) classifies the 10,000 test
images zero-shot at top-1 >= 0.75: a 1000-step run (slow, about 2 minutes on 2 cores) and the
demo as configured (demo, 2000 steps, about 4 minutes)."""

import os
import time

import pytest

from bigvl import metrics
from bigvl.data import fashion_mnist as fm
from conftest import REPO, run_bigvl

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.isfile(fm.file_path(fm.DEFAULT_DIR, "test", "labels")),
                       reason=fm.INSTALL),
]

CONFIG = os.path.join(REPO, "configs", "demo", "siglip_fashion_mnist.py")
METRIC = "eval/zeroshot_fashion_mnist/top1"


def train(workdir, arg=""):
  """Trains the demo (`arg`: its config arg) in `workdir`; (last value of every metric, minutes)."""
  t0 = time.time()
  run_bigvl(["--config", CONFIG + (f":{arg}" if arg else ""), "--workdir", str(workdir)],
            check=True, timeout=1800)
  last = {}
  for row in metrics.read_jsonl(str(workdir / "metrics.jsonl")):
    last.update(row)
  minutes = (time.time() - t0) / 60
  print(f"siglip_fashion_mnist {arg or 'default'}: {minutes:.1f} min, {METRIC} {last[METRIC]}")
  return last, minutes


@pytest.mark.slow
def test_short_run_classifies_zero_shot(tmp_path):
  last, _ = train(tmp_path, "steps=1000")
  assert last["step"] == 1000
  assert last[METRIC] >= 0.75


@pytest.mark.demo
def test_demo_reaches_its_documented_zero_shot_top1(tmp_path):
  last, minutes = train(tmp_path)
  assert last[METRIC] >= 0.75
  assert minutes < 15
