"""The decoder-only LM and its objective: the next-token loss against a float64 reference,
learning on a tiny fixed set, causality, and KV-cached decoding against the full forward
(with learned and with rotary positions)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigvl import models, objectives
from bigvl.objectives.language import LanguageModeling, next_token_loss

pytestmark = pytest.mark.unit

EOS, PAD = 2, 0
TINY_LM = dict(name="lm", vocab_size=16, width=32, depth=2, mlp_dim=64, num_heads=2, max_len=16)


def random_params(model, length: int, seed: int = 0, scale: float = 0.02):
  """NumPy-drawn params (LayerNorm scales ~1, the rest ~0): compiling `model.init` costs
  seconds of CPU, its shapes (`eval_shape`) almost nothing. No bias is left at zero, so a
  misplaced one would show."""
  tokens = jax.ShapeDtypeStruct((2, length), jnp.int32)
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"])
  rng = np.random.default_rng(seed)
  draw = lambda path, s: (rng.normal(0.0, scale, s.shape)
                          + (path[-1].key == "scale")).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def reference_loss(logits, tokens, *, eos_id=EOS, pad_id=PAD, ignore_ids=(), smoothing=0.0):
  """Straight loops in float64: the definition next_token_loss implements."""
  logits = np.asarray(logits, np.float64)
  b, l, vocab = logits.shape
  total = correct = count = 0.0
  for r in range(b):
    for i in range(l - 1):
      t = int(tokens[r, i + 1])
      if t == pad_id or t in ignore_ids or eos_id in tokens[r, 1:i + 1].tolist():
        continue  # Padding, an ignored id, or after the row's first EOS target.
      z = logits[r, i] - logits[r, i].max()
      logp = z - np.log(np.exp(z).sum())
      labels = np.full(vocab, smoothing / vocab)
      labels[t] += 1.0 - smoothing
      total += -(labels * logp).sum()
      correct += float(np.argmax(logp) == t)
      count += 1
  return total / max(count, 1), correct / max(count, 1)


TOKENS = np.array([
    [5, 6, 7, 8, 2, 9, 9, 9],      # EOS in the middle: 9s after it are not targets.
    [5, 11, 12, 13, 0, 0, 0, 0],   # Padding.
    [2, 7, 11, 7, 3, 2, 0, 0],     # Leading EOS (GPT-2's BOS) is context; 11 is ignored.
    [4, 4, 4, 4, 4, 4, 4, 4],      # No EOS: every target counts.
], np.int32)


@pytest.mark.parametrize("ignore_ids", [(), (11,), (11, 4)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_next_token_loss_matches_float64_reference(ignore_ids, smoothing):
  logits = np.random.default_rng(0).normal(0, 3, (*TOKENS.shape, 16)).astype(np.float32)
  logits[0, 0, 6] = 50.0  # Make some predictions right, so accuracy is not trivially 0.
  logits[3, :, 4] = 50.0
  loss, acc = next_token_loss(jnp.asarray(logits), jnp.asarray(TOKENS), ignore_ids=ignore_ids,
                              label_smoothing=smoothing)
  want_loss, want_acc = reference_loss(logits, TOKENS, ignore_ids=ignore_ids, smoothing=smoothing)
  assert loss.dtype == acc.dtype == jnp.float32
  assert abs(float(loss) - want_loss) <= 1e-6 * max(1.0, want_loss)
  assert abs(float(acc) - want_acc) <= 1e-6
  assert 0.0 < want_acc < 1.0


def test_next_token_loss_with_no_targets_is_zero():
  tokens = jnp.array([[5, 0, 0], [7, 2, 2]], jnp.int32)
  loss, acc = next_token_loss(jnp.ones((2, 3, 8)), tokens, ignore_ids=(2,))
  assert float(loss) == 0.0 and float(acc) == 0.0


def test_lm_objective_is_registered_and_reports_perplexity():
  obj = objectives.build({"name": "lm", "ignore_tokens": [11]})
  assert isinstance(obj, LanguageModeling) and obj.ignore_tokens == (11,)
  model = models.build(TINY_LM)
  params = random_params(model, TOKENS.shape[1])
  run = jax.jit(lambda p, batch, rng: obj.loss(model, p, batch, rng, train=False))
  loss, metrics = run(params, {"text": TOKENS}, jax.random.PRNGKey(1))
  assert set(metrics) == {"token_accuracy", "perplexity"}
  np.testing.assert_allclose(metrics["perplexity"], np.exp(loss), rtol=1e-6)
  with pytest.raises(ValueError, match="label_smoothing"):
    objectives.build({"name": "lm", "label_smoothing": 1.0})


def test_lm_objective_learns_a_tiny_set():
  # 8 fixed sequences: an arithmetic progression mod 13 (ids 3..15), then EOS and padding.
  rows = []
  for s in range(8):
    n = 6 + s % 5
    row = [3 + (s + (1 + s % 3) * i) % 13 for i in range(n)] + [EOS]
    rows.append(row + [PAD] * (12 - len(row)))
  batch = {"text": jnp.asarray(rows, jnp.int32)}
  model = models.build(dict(TINY_LM, depth=1))
  obj = objectives.build({"name": "lm"})
  params = random_params(model, 12)
  opt = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, rng):
    (loss, _), grads = jax.value_and_grad(obj.loss, argnums=1, has_aux=True)(
        model, params, batch, rng)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = opt.init(params)
  losses = []
  for i in range(100):
    params, opt_state, loss = step(params, opt_state, jax.random.PRNGKey(i))
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


@pytest.fixture(scope="module", params=["learned", "rope"])
def tiny_lm(request):
  model = models.build(dict(TINY_LM, act="gelu_tanh", ln_eps=1e-5, tie_embeddings=True,
                            position=request.param))
  return model, random_params(model, 12, seed=1, scale=0.1)


def test_causal_lm_is_causal(tiny_lm):
  model, params = tiny_lm
  tokens = np.random.default_rng(0).integers(0, 16, (2, 12)).astype(np.int32)
  run = jax.jit(lambda t: model.apply({"params": params}, t))
  base = np.asarray(run(tokens))
  for j in (1, 5, 11):
    changed = tokens.copy()
    changed[:, j] = (changed[:, j] + 1) % 16
    out = np.asarray(run(changed))
    np.testing.assert_array_equal(out[:, :j], base[:, :j])
    assert not np.allclose(out[:, j], base[:, j])


def test_kv_cache_decode_matches_full_forward(tiny_lm):
  model, params = tiny_lm
  tokens = np.random.default_rng(1).integers(0, 16, (2, 12)).astype(np.int32)
  with jax.default_matmul_precision("highest"):
    full = np.asarray(jax.jit(lambda t: model.apply({"params": params}, t))(tokens))
    # An init call in decode mode on a full-length input creates the (empty) cache; its
    # shapes are all that is needed (as bigvl.decoding.init_cache does).
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16), jnp.int32),
                                               decode=True)["cache"])
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    @jax.jit
    def step(cache, tok):
      logits, mutated = model.apply({"params": params, "cache": cache}, tok, decode=True,
                                    mutable=["cache"])
      return logits[:, 0], mutated["cache"]

    steps = []
    for i in range(tokens.shape[1]):
      logits, cache = step(cache, tokens[:, i:i + 1])
      steps.append(np.asarray(logits))
  np.testing.assert_allclose(np.stack(steps, axis=1), full, atol=1e-5, rtol=0)
