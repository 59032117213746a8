"""SIGKILL after a checkpoint, run the same command again: the run resumes, not restarts."""

import os
import signal
import subprocess
import sys
import time

import pytest

from bigvl import metrics
from conftest import DEMO_SIGLIP, REPO, run_bigvl


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


def _losses(workdir):
  return {r["step"]: r["train/loss"] for r in metrics.read_jsonl(str(workdir / "metrics.jsonl"))
          if "train/loss" in r}


def test_sigkill_then_rerun_resumes_and_matches_uninterrupted(tmp_path):
  args = ["--config.total_steps=80", "--config.checkpoint_every=20", "--config.log_every=10",
          "--config.evals={}"]
  killed = tmp_path / "killed"
  proc = _kill_after_checkpoint(killed, 20, *args)
  assert proc.returncode == -signal.SIGKILL
  before = _losses(killed)
  assert max(before) < 80  # Really interrupted.

  rerun = run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(killed), *args], check=True)
  resumed_at = int(rerun.stdout.split("Resumed from checkpoint step ")[1].split()[0])
  assert resumed_at >= 20 and resumed_at % 20 == 0
  after = {s: l for s, l in _losses(killed).items() if s > resumed_at}
  assert min(after) == resumed_at + 10  # The step count continues; it does not restart at 0.
  assert max(after) == 80

  straight = tmp_path / "straight"
  run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(straight), *args], check=True)
  reference = _losses(straight)
  # Same batches, same restored state: the resumed run is the uninterrupted run.
  assert {s: reference[s] for s in after} == after


@pytest.mark.slow
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
