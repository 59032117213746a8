"""The CapPa and CoCa demos learn to caption held-out shapes; beam search on the trained
captioner. Acceptance 2 and 4 of the generative-objectives issue."""

import os
import time

import flax.linen as nn
import jax
import numpy as np
import pytest

from bigvl import checkpoint, config_lib, decoding, metrics, models
from bigvl.data import shapes, tokenizer as tok_lib, transforms
from conftest import REPO, run_bigvl

pytestmark = pytest.mark.integration

CAPPA = os.path.join(REPO, "configs", "demo", "cappa_shapes.py")
COCA = os.path.join(REPO, "configs", "demo", "coca_shapes.py")


def _train(config, workdir):
  t0 = time.time()
  run_bigvl(["--config", config, "--workdir", str(workdir)], check=True, timeout=1800)
  minutes = (time.time() - t0) / 60
  rows = metrics.read_jsonl(str(workdir / "metrics.jsonl"))
  last = {}
  for r in rows:
    last.update(r)
  print(f"{os.path.basename(config)}: {minutes:.1f} min, final {last}")
  return last, minutes


def _trained(config_path, workdir):
  """(model, params, tokenizer) of a finished demo workdir."""
  config = config_lib.with_defaults(config_lib.load_config_file(config_path))
  tok = tok_lib.Tokenizer.load(str(workdir / "tokenizer.model"))
  config.model.decoder.vocab_size = tok.vocab_size
  model = models.build(config.model)
  flat = checkpoint.load_params(str(workdir))
  init = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32),
                    np.zeros((1, 16), np.int32))["params"]
  params, report = checkpoint.merge_params(nn.unbox(init), flat)
  assert not report["new"] and not report["mismatched"], report
  return model, params, tok


@pytest.mark.demo
def test_cappa_demo_captions_held_out_shapes_and_beam_search_beats_greedy(tmp_path):
  last, minutes = _train(CAPPA, tmp_path)
  assert last["eval/captions/exact_match"] >= 0.8
  assert minutes < 15
  model, params, tok = _trained(CAPPA, tmp_path)
  src = shapes.Shapes("test")
  pp = transforms.build("value_range(-1, 1)")
  images = np.stack([pp(src[i], None)["image"] for i in range(64)])
  memory = model.apply({"params": params}, images, method="encode")
  g, g_lp = decoding.greedy(model, params, memory, max_len=16, eos_id=tok.eos_id)
  b1, b1_lp = decoding.beam_search(model, params, memory, beam_size=1, max_len=16,
                                   eos_id=tok.eos_id)
  np.testing.assert_array_equal(b1, g)
  b4, b4_lp = decoding.beam_search(model, params, memory, beam_size=4, max_len=16,
                                   eos_id=tok.eos_id)
  assert (np.asarray(b4_lp) >= np.asarray(g_lp) - 1e-5).all(), (b4_lp, g_lp)
  # The reported log-probabilities are the model's, by teacher forcing.
  np.testing.assert_allclose(decoding.sequence_logprob(model, params, memory, b4,
                                                       eos_id=tok.eos_id), b4_lp, atol=1e-4)


@pytest.mark.demo
def test_coca_demo_captions_and_classifies_colours_zero_shot(tmp_path):
  last, minutes = _train(COCA, tmp_path)
  assert last["eval/captions/exact_match"] >= 0.8
  assert last["eval/zeroshot_colors/top1"] >= 0.9
  assert minutes < 15
