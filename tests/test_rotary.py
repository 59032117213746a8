"""Rotary positions: parity with HF LLaMA's, the relative-position property, bad input."""

import jax.numpy as jnp
import numpy as np
import pytest

from bigvl import models
from bigvl.convert import testing
from bigvl.models import rotary

pytestmark = pytest.mark.unit


def test_rotation_matches_hf_llama_at_1e_5():
  testing.import_torch_references()
  import torch
  from transformers.models.llama import modeling_llama as llama
  b, l, h, d = 2, 7, 3, 8
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(2, b, l, h, d)).astype(np.float32)
  positions = np.stack([np.arange(l), np.arange(5, 5 + l)])          # (b, l), per row.
  inv_freq = 1.0 / (10_000 ** (np.arange(0, d, 2) / d))
  emb = np.concatenate([positions[..., None] * inv_freq] * 2, -1)   # HF: cat(freqs, freqs).
  cos, sin = torch.tensor(np.cos(emb)), torch.tensor(np.sin(emb))
  # HF takes (b, heads, l, d).
  tq, tk = (torch.tensor(x).permute(0, 2, 1, 3).double() for x in (q, k))
  hq, hk = llama.apply_rotary_pos_emb(tq, tk, cos, sin)
  np.testing.assert_allclose(np.asarray(rotary.rotate(jnp.asarray(q), positions)),
                             hq.permute(0, 2, 1, 3).numpy(), atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(rotary.rotate(jnp.asarray(k), positions)),
                             hk.permute(0, 2, 1, 3).numpy(), atol=1e-5, rtol=0)


def test_scores_depend_on_the_offset_only():
  rng = np.random.default_rng(1)
  q, k = (jnp.asarray(rng.normal(size=(1, 6, 2, 16)), jnp.float32) for _ in range(2))
  scores = lambda start: np.einsum(
      "bqhd,bkhd->bhqk", rotary.rotate(q, start + jnp.arange(6)),
      rotary.rotate(k, start + jnp.arange(6)))
  np.testing.assert_allclose(scores(0), scores(1000), atol=2e-3)
  # ...and the rotation does change them (it is not the identity).
  plain = np.einsum("bqhd,bkhd->bhqk", q, k)
  assert np.abs(scores(0) - plain).max() > 0.1


def test_an_odd_head_dimension_and_an_unknown_position_are_refused():
  with pytest.raises(ValueError, match="even head dimension, got 5"):
    rotary.rotate(jnp.zeros((1, 2, 1, 5)), jnp.arange(2))
  model = models.build(dict(name="lm", vocab_size=8, width=8, depth=1, mlp_dim=8, num_heads=2,
                            position="alibi"))
  with pytest.raises(ValueError, match="position='alibi'; valid: learned, rope"):
    model.init(__import__("jax").random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
