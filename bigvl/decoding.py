"""Caption generation with a KV cache: greedy, beam search, temperature/top-k sampling.

Works with any model that has the captioner methods (`encode`, `decode_step`; see
bigvl/models/captioner.py). Every function is jittable: a fixed number of `max_len` steps
in a `lax.scan`, batched; a sequence that has emitted EOS continues with padding at no
cost. Outputs use the tokenizer's layout: (b, max_len) ids, EOS, then `pad_id`.

The decoder's start token is `pad_id` (inputs are the targets shifted right).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NEG_INF = -1e9


def init_cache(model, params, memory, max_len: int):
  """An empty KV cache for `memory.shape[0]` sequences of up to `max_len` tokens."""
  dummy = jnp.zeros((memory.shape[0], max_len), jnp.int32)

  def init(m):
    return model.init(jax.random.PRNGKey(0), m, dummy, method=_full_decode)["cache"]
  shapes = jax.eval_shape(init, memory)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _full_decode(module, memory, tokens):
  # Runs the decoder over a full-length input in decode mode: creates the cache variables.
  return module.dec(tokens, memory, decode=True)


def step(model, params, memory, cache, prev):
  """One decoding step with the KV cache (the body of every decoder here; for custom loops).

  Args:
    memory: (b, m, d) from the model's `encode`; cache: from `init_cache` or the previous step;
    prev: (b,) int32, the token each sequence emitted last (`pad_id` at the start).
  Returns:
    (log-probabilities (b, vocab) float32 of the next token, the updated cache).
  """
  logits, mutated = model.apply({"params": params, "cache": cache}, prev[:, None], memory,
                                method="decode_step", mutable=["cache"])
  return jax.nn.log_softmax(logits.astype(jnp.float32)), mutated["cache"]


_JITTED: dict = {}


def _jit(fn, model, **static):
  """`fn` with `model` bound, jitted once per (fn, model instance, static options): Flax
  modules with dict fields cannot be hashed as static arguments."""
  key = (fn, id(model), tuple(sorted(static.items())))
  if key not in _JITTED:
    _JITTED[key] = (model, jax.jit(functools.partial(fn, model, **static)))
  return _JITTED[key][1]


def sample(model, params, memory, rng, *, max_len: int, eos_id: int, pad_id: int = 0,
           temperature: float = 0.0, top_k: int = 0):
  """Greedy (`temperature=0`) or sampled captions for `memory` (b, m, d).

  Sampling draws from softmax(logits / temperature), restricted to the `top_k` most likely
  tokens when `top_k > 0`. Returns (tokens (b, max_len) int32, log-probability (b,) of each
  sequence under the model, EOS included).
  """
  return _jit(_sample, model, max_len=max_len, eos_id=eos_id, pad_id=pad_id,
              temperature=temperature, top_k=top_k)(params, memory, rng)


def _sample(model, params, memory, rng, *, max_len, eos_id, pad_id, temperature, top_k):
  b = memory.shape[0]
  cache = init_cache(model, params, memory, max_len)

  def body(carry, key):
    cache, prev, done, total = carry
    logp, cache = step(model, params, memory, cache, prev)
    if temperature == 0.0:
      nxt = jnp.argmax(logp, axis=-1)
    else:
      scores = logp / temperature
      if top_k:
        kth = jax.lax.top_k(scores, top_k)[0][:, -1:]
        scores = jnp.where(scores < kth, NEG_INF, scores)
      nxt = jax.random.categorical(key, scores, axis=-1)
    nxt = jnp.where(done, pad_id, nxt).astype(jnp.int32)
    total = total + jnp.where(done, 0.0, jnp.take_along_axis(logp, nxt[:, None], -1)[:, 0])
    done = done | (nxt == eos_id)
    return (cache, nxt, done, total), nxt

  start = jnp.full((b,), pad_id, jnp.int32)
  init = (cache, start, jnp.zeros((b,), bool), jnp.zeros((b,), jnp.float32))
  (_, _, _, total), tokens = jax.lax.scan(body, init, jax.random.split(rng, max_len))
  return tokens.T, total


def greedy(model, params, memory, *, max_len: int, eos_id: int, pad_id: int = 0):
  """Greedy decoding: (tokens (b, max_len), log-probability (b,))."""
  return sample(model, params, memory, jax.random.PRNGKey(0), max_len=max_len, eos_id=eos_id,
                pad_id=pad_id)


def beam_search(model, params, memory, *, beam_size: int, max_len: int, eos_id: int,
                pad_id: int = 0):
  """Beam search by total log-probability (no length penalty).

  Each step extends every live beam by every token and keeps the `beam_size` best; a beam
  that has emitted EOS is carried on with padding at no cost, so finished and unfinished
  hypotheses compete on the same score. Returns the best beam: (tokens (b, max_len),
  log-probability (b,)).
  """
  return _jit(_beam_search, model, beam_size=beam_size, max_len=max_len, eos_id=eos_id,
              pad_id=pad_id)(params, memory)


def _beam_search(model, params, memory, *, beam_size, max_len, eos_id, pad_id):
  b, k = memory.shape[0], beam_size
  flat = lambda x: x.reshape((b * k,) + x.shape[2:])
  memory_k = flat(jnp.repeat(memory[:, None], k, axis=1))
  cache = init_cache(model, params, memory_k, max_len)
  # Only beam 0 is live at the start: k copies of one prefix would fill the beam with duplicates.
  scores = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))

  def body(carry, t):
    cache, seqs, scores, done = carry
    prev = jnp.where(t == 0, pad_id, seqs[:, :, jnp.maximum(t - 1, 0)])
    logp, cache = step(model, params, memory_k, cache, flat(prev))
    vocab = logp.shape[-1]
    logp = logp.reshape(b, k, vocab)
    # A finished beam may only continue with padding, at no cost.
    pad_only = jnp.full((vocab,), NEG_INF).at[pad_id].set(0.0)
    logp = jnp.where(done[:, :, None], pad_only, logp)
    cand = (scores[:, :, None] + logp).reshape(b, k * vocab)
    scores, idx = jax.lax.top_k(cand, k)
    beam, token = idx // vocab, (idx % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(seqs, beam[:, :, None], axis=1).at[:, :, t].set(token)
    done = jnp.take_along_axis(done, beam, axis=1) | (token == eos_id)
    # Every cache entry is per sequence: reorder along the flattened (b * k) axis.
    rows = (jnp.arange(b)[:, None] * k + beam).reshape(-1)
    cache = jax.tree.map(lambda c: c[rows] if c.ndim and c.shape[0] == b * k else c, cache)
    return (cache, seqs, scores, done), None

  seqs = jnp.full((b, k, max_len), pad_id, jnp.int32)
  init = (cache, seqs, scores, jnp.zeros((b, k), bool))
  (_, seqs, scores, _), _ = jax.lax.scan(body, init, jnp.arange(max_len))
  best = jnp.argmax(scores, axis=1)
  return seqs[jnp.arange(b), best], scores[jnp.arange(b), best]


def sequence_logprob(model, params, memory, tokens, *, eos_id: int, pad_id: int = 0):
  """Teacher-forced log-probability (b,) of `tokens` (b, l): the sum over positions up to
  and including the first EOS (all positions when there is none)."""
  logits = model.apply({"params": params}, memory, tokens, method="caption_logits")
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  tok = jnp.take_along_axis(logp, tokens[..., None], -1)[..., 0]
  return (tok * token_mask(tokens, eos_id)).sum(-1)


def token_mask(tokens, eos_id: int):
  """1.0 at every position up to and including the first EOS (everything if none)."""
  is_eos = (tokens == eos_id).astype(jnp.int32)
  before = jnp.cumsum(is_eos, axis=-1) - is_eos  # EOS seen strictly before this position.
  return (before == 0).astype(jnp.float32)
