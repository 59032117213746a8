"""tools/binding_lm_check.py measures what it says: an LM that copies the name after a
seen key scores 1, one that always predicts the same name about 1/20 (below the 0.2 an LM
that knows only the sequence's names would get)."""

import numpy as np
import pytest

from bigvl.data import sources, tokenizer as tok_lib
from bigvl.data.binding import KEYS, NAMES
from conftest import load_tool

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tok():
  src = sources.build(dict(name="binding", inner=dict(name="digits", split="train"), keys=True))
  return tok_lib.train(src.texts(), vocab_size=64,
                       special_tokens=("<image>", "<|endofchunk|>", *KEYS, *NAMES))


def test_a_copying_lm_scores_one_and_a_constant_one_about_a_fifth(tok):
  check = load_tool("binding_lm_check")
  vocab = tok.vocab_size

  def oracle(ids):  # Logits peaked on the true next token: a perfect copier.
    out = np.zeros(ids.shape + (vocab,), np.float32)
    nxt = np.concatenate([ids[:, 1:], ids[:, -1:]], 1)
    np.put_along_axis(out, nxt[..., None], 1.0, -1)
    return out

  overall, bands = check.name_accuracy(oracle, tok, 128, 16, seed=3)
  assert overall == 1.0 and set(bands) == {"chunks 0-9", "10-19", "20-29", "30-40"}

  dax = tok.piece_id("dax")
  def constant(ids):  # Always "dax": right when the sequence's named class is dax's.
    out = np.zeros(ids.shape + (vocab,), np.float32)
    out[..., dax] = 1.0
    return out

  overall, _ = check.name_accuracy(constant, tok, 128, 64, seed=3)
  # dax is one of the 5 names in a quarter of sequences (5 of 20), then a fifth of chunks.
  assert overall < 0.15
