"""Fault: killed and resumed, a run logs each step once (issue 18, item 6).

A kill loses the steps since the last checkpoint; the resumed run trains them again. Their
first rows must not stay: metrics.jsonl drops the rows after the restored step, and
TensorBoard (its own rule: a SessionLog START at step s supersedes the earlier files'
events at steps >= s) shows each step once, with the resumed run's values.
"""

import random
import signal
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from bigvl import checkpoint, metrics
from conftest import DEMO_SIGLIP, run_bigvl
from test_reliability import FAST, checkpoint_steps, logged_steps, popen_train

pytestmark = [pytest.mark.faults, pytest.mark.integration]

STEPS = 40


def _rows(workdir):
  return [r for r in metrics.read_jsonl(str(workdir / "metrics.jsonl")) if "train/loss" in r]


def _tensorboard(workdir, tag="train/loss"):
  acc = event_accumulator.EventAccumulator(str(workdir / "tensorboard"),
                                           purge_orphaned_data=True)
  acc.Reload()
  return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(workdir),
             f"--config.total_steps={STEPS}", *FAST], check=True)
  return {r["step"]: r["train/loss"] for r in _rows(workdir)}, checkpoint.load_params(str(workdir))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_step_is_logged_once_after_a_kill_at_a_random_time(tmp_path, straight, seed):
  """Also the fault suite's kill at a seeded random wall-clock time (not a step): the
  resumed run ends with the uninterrupted run's params, bit for bit."""
  straight, final = straight
  workdir = tmp_path / "run"
  proc = popen_train(workdir, f"--config.total_steps={STEPS}", *FAST)
  deadline = time.time() + 300
  while not checkpoint_steps(workdir) or max(logged_steps(workdir), default=0) < 11:
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline
    time.sleep(0.01)
  time.sleep(random.Random(seed).uniform(0.0, 1.5))  # A wall-clock kill point, not a step.
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  killed_at = max(logged_steps(workdir))
  resumed = max(checkpoint_steps(workdir))
  if killed_at <= resumed or killed_at >= STEPS:
    pytest.skip(f"the kill (step {killed_at}) left no step to replay after {resumed}")
  run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(workdir),
             f"--config.total_steps={STEPS}", *FAST], check=True)

  steps = [r["step"] for r in _rows(workdir)]
  assert steps == list(range(1, STEPS + 1)), f"killed at {killed_at}, resumed {resumed}: {steps}"
  assert {r["step"]: r["train/loss"] for r in _rows(workdir)} == straight
  board = _tensorboard(workdir)
  assert [s for s, _ in board] == list(range(1, STEPS + 1))
  for step, value in board:
    assert value == pytest.approx(straight[step], rel=1e-6), step
  params = checkpoint.load_params(str(workdir))
  for k, v in final.items():
    assert np.array_equal(params[k], v), k
