"""The in-context evaluator: its batched class scores equal the query-chunk log-likelihood
computed directly from the model's forward pass, and its captioning path generates, stops
and scores. A tiny Flamingo with its gates opened, so that images matter."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvl import evaluators, models
from bigvl.data import sources, tokenizer as tok_lib
from bigvl.data.interleaved import IMAGE, SPECIAL_TOKENS
from bigvl.evaluators.in_context import chunk, query_chunk_mask

pytestmark = pytest.mark.integration

TINY = dict(width=32, depth=1, mlp_dim=64, num_heads=4)
PP = "resize(16)|value_range(-1, 1)"


@functools.cache
def _setup():
  src = sources.build(dict(name="interleaved", inner=dict(name="digits", split="train"),
                           k=3, size=16))
  tok = tok_lib.train(src.texts(), 128, special_tokens=SPECIAL_TOKENS)
  model = models.build(dict(
      name="flamingo", vision=dict(TINY, patch_size=4), lm=dict(TINY, vocab_size=tok.vocab_size,
                                                                 max_len=48),
      resampler=dict(depth=1, num_latents=4, num_heads=4, mlp_dim=64),
      xattn=dict(num_heads=4, mlp_dim=64), image_token_id=tok.piece_id(IMAGE)))
  images = jnp.zeros((1, 3, 16, 16, 1))
  tokens = jnp.asarray(tok.encode(chunk("a photo of the digit one."), 48))[None]
  params = model.init(jax.random.key(0, impl="unsafe_rbg"), images, tokens)["params"]
  # Open the gates: at 0 the images would not matter and every test would pass trivially.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.full_like(x, 1.0) if "alpha" in jax.tree_util.keystr(p) else x, params)
  ctx = evaluators.EvalContext(model=model, tokenizer=tok, text_len=48, mesh=None, rules=None)
  ev = evaluators.build("ic", dict(name="in_context", data=dict(name="digits", split="test",
                                                                 pp=PP),
                                   shots=(0, 2), max_examples=6, batch_size=8,
                                   captioning=True, max_caption_len=4), ctx)
  return model, params, tok, ev


@pytest.mark.slow  # Over 10 s on 2 cores: the default suite stays under 10 minutes.
def test_scores_equal_the_query_chunk_log_likelihood_of_a_direct_forward():
  model, params, tok, ev = _setup()
  k, i = 2, 3
  idx = np.array([i])
  texts = [ev.prefix(i, k) + chunk(ev.prompt.format(c)) for c in ev.class_names]
  tokens = ev.encode_prompts(texts)
  mask = query_chunk_mask(tokens, tok.piece_id(IMAGE), tok.pad_id)
  got = ev.class_scores(params, idx, k)[0]
  want = []
  images = jnp.asarray(ev.images(idx, k))
  for row, m in zip(tokens, mask):
    logits = np.asarray(model.apply({"params": params}, images, jnp.asarray(row[None])),
                        np.float64)[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                            keepdims=True)) \
        - logits.max(-1, keepdims=True)
    want.append(sum(logp[t - 1, row[t]] for t in range(1, len(row)) if m[t]))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  assert np.ptp(got) > 0  # The classes are told apart (by text and image).
  # The prompt holds k supports, each an image marker and its own label's caption.
  assert texts[0].count(IMAGE) == k + 1
  first = int(ev.support_indices(i, k)[0])
  assert ev.prompt.format(ev.class_names[int(ev.support[first]["label"])]) in texts[0]


@pytest.mark.slow  # Over 15 s: keeps the default run near 10 minutes; CI runs it.
def test_supports_nest_and_the_evaluator_reports_every_shot():
  model, params, tok, ev = _setup()
  supports = np.stack([ev.support_indices(i, 2) for i in range(ev.n)])
  assert supports.shape == (6, 2)
  assert all((ev.support_indices(i, 1) == supports[i, :1]).all() for i in range(ev.n))
  out = ev.run(params)
  assert set(out) == {f"{k}shot/{m}" for k in (0, 2)
                      for m in ("top1", "caption_exact", "caption_label")}
  assert all(0.0 <= v <= 1.0 for v in out.values())
