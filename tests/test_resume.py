"""The README demo, SIGKILLed after its first checkpoint and re-run, still reaches its target.

The bit-exact resume tests are in test_reliability.py."""

import os
import signal
import subprocess
import sys
import time

import pytest

from bigvl import metrics
from conftest import DEMO_SIGLIP, REPO, run_bigvl

pytestmark = pytest.mark.integration


def _start(workdir, *extra):
  cmd = [sys.executable, "-m", "bigvl.train", "--config", DEMO_SIGLIP, "--workdir", str(workdir),
         *extra]
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _kill_after_checkpoint(workdir, step, *extra, timeout=300):
  proc = _start(workdir, *extra)
  ckpt = workdir / "checkpoints" / str(step)
  deadline = time.time() + timeout
  while not ckpt.exists():
    assert proc.poll() is None, f"run ended before checkpoint {step}:\n{proc.stdout.read()}"
    assert time.time() < deadline, "no checkpoint in time"
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return proc


@pytest.mark.demo  # The whole demo trained (about 2.5 minutes): not in CI's slow run.
def test_demo_killed_after_first_checkpoint_still_reaches_target(tmp_path):
  workdir = tmp_path / "demo"
  _kill_after_checkpoint(workdir, 500)
  rerun = run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(workdir)], check=True,
                    timeout=1200)
  assert "Resumed from checkpoint step 500" in rerun.stdout
  evals = [r for r in metrics.read_jsonl(str(workdir / "metrics.jsonl"))
           if "eval/zeroshot_digits/top1" in r]
  assert evals[-1]["step"] == 1500
  assert evals[-1]["eval/zeroshot_digits/top1"] >= 0.90
