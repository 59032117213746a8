"""A run whose workdir is in an object store: the SigLIP demo with --workdir gs://... against
the GCS emulator, killed with SIGKILL after its first checkpoint and resumed by the same
command, ends with the params of a local-disk run, bit for bit; every file of the run is an
object in the bucket and nothing is written under the process's working directory."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bigvl import checkpoint, metrics, storage
from conftest import DEMO_SIGLIP, run_bigvl

pytestmark = pytest.mark.integration

ARGS = ["--config.total_steps=30", "--config.checkpoint_every=10", "--config.log_every=5",
        "--config.evals={}"]


def _train(workdir, cwd, env):
  return subprocess.Popen(
      [sys.executable, "-m", "bigvl.train", "--config", DEMO_SIGLIP, "--workdir", workdir, *ARGS],
      cwd=cwd, env=dict(os.environ, PYTHONUNBUFFERED="1", **env), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)


def _committed(workdir, step):
  # Orbax marks a step complete on a store with this object (no atomic rename there).
  return storage.exists(storage.join(workdir, "checkpoints", str(step), "commit_success.txt"))


@pytest.mark.slow
def test_gcs_workdir_survives_sigkill_and_matches_a_local_run(tmp_path, gcs_server):
  local = tmp_path / "local"
  run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(local), *ARGS], check=True)

  workdir = storage.join(gcs_server.bucket(), "runs", "siglip")
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  proc = _train(workdir, cwd, gcs_server.env())
  deadline = time.time() + 300
  while not _committed(workdir, 10):
    assert proc.poll() is None, f"run ended before its first checkpoint:\n{proc.stdout.read()}"
    assert time.time() < deadline, "no checkpoint in 300 s"
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL, out
  assert not _committed(workdir, 30)

  proc = _train(workdir, cwd, gcs_server.env())
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  assert "Resumed from checkpoint step" in out, out

  names = storage.listdir(workdir)
  for name in ("config.json", "metrics.jsonl", "tokenizer.model", "README.md", "tensorboard",
               "checkpoints"):
    assert name in names, f"{name} not in the bucket: {names}"
  assert any(n.startswith("events.out.tfevents.")
             for n in storage.listdir(storage.join(workdir, "tensorboard")))
  assert os.listdir(cwd) == [], "the run wrote under its working directory"
  steps = [r["step"] for r in metrics.read_jsonl(storage.join(workdir, "metrics.jsonl"))]
  assert max(steps) == 30

  ours, theirs = checkpoint.load_params(workdir), checkpoint.load_params(str(local))
  assert ours.keys() == theirs.keys()
  for k in ours:
    assert np.array_equal(ours[k], theirs[k]), f"param {k} differs from the local run"
