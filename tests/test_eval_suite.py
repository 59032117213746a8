"""Evaluator suite: retrieval recall on hand-made embeddings; the same numbers on 1 and 8
devices for every evaluator."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bigvl.evaluators.retrieval import recall_at_k
from conftest import REPO

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.unit
def test_recall_at_k_on_hand_made_embeddings():
  img = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
  txt = np.array([[1, 0], [0, 1],          # image 0's captions; the second looks like image 1
                  [.6, .8], [-.6, .8],     # image 1's
                  [-1, 0], [.8, .6]],      # image 2's; the second looks like image 0
                 np.float32)
  owner = np.array([0, 0, 1, 1, 2, 2])
  r = recall_at_k(img, txt, owner, ks=(1, 2, 5))
  # i2t: image 1's nearest text is t1 (image 0's), its own t2 comes second.
  assert r["i2t_r@1"] == pytest.approx(2 / 3) and r["i2t_r@2"] == 1.0 and r["i2t_r@5"] == 1.0
  # t2i: t1 ties images 0 and 2 at 0 behind image 1 (rank 1); t5 ranks its image last.
  assert r["t2i_r@1"] == pytest.approx(4 / 6)
  assert r["t2i_r@2"] == pytest.approx(5 / 6)
  assert r["t2i_r@5"] == 1.0


def _run(devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.run([sys.executable, os.path.join(HERE, "eval_devices_check.py")], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.integration
@pytest.mark.slow
def test_every_evaluator_gives_the_same_numbers_on_1_and_8_devices():
  one, eight = _run(1), _run(8)
  assert (one.pop("devices"), eight.pop("devices")) == (1, 8)
  assert set(one) >= {"zeroshot/top1", "retrieval/i2t_r@1", "retrieval/t2i_r@10",
                      "captioning/bleu4", "captioning/cider", "scoring/top1",
                      "perplexity/perplexity"}
  # Counts and ranks are identical. Perplexity sums float32 per-example log-likelihoods,
  # whose last bit depends on how XLA blocks a batch of 16 vs 2 per device: 1e-7 relative.
  continuous = {k for k in one if k.startswith("perplexity/")}
  assert {k: v for k, v in one.items() if k not in continuous} == \
      {k: v for k, v in eight.items() if k not in continuous}
  for k in continuous:
    assert eight[k] == pytest.approx(one[k], rel=1e-7)
