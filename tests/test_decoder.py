"""The text decoder, its KV cache, decoding, and the generative objectives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvl import decoding, models, objectives

V, L = 40, 10
TOWER = dict(width=32, depth=2, mlp_dim=64, num_heads=4)


def _captioner(**dec):
  return models.build(dict(name="captioner", image=dict(patch_size=4, posemb="learn", **TOWER),
                           decoder=dict(vocab_size=V, max_len=L, **TOWER, **dec)))


def _coca():
  return models.build(dict(name="coca", image=dict(patch_size=4, posemb="learn", **TOWER),
                           decoder=dict(vocab_size=V, max_len=L, unimodal_depth=1, **TOWER),
                           embed_dim=16))


def _inputs(b=3, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(b, 16, 16, 3)).astype(np.float32)
  text = rng.integers(3, V, size=(b, L)).astype(np.int32)
  text[:, 6] = 2  # EOS, then padding.
  text[:, 7:] = 0
  return jnp.asarray(image), jnp.asarray(text)


def _params(model, image, text):
  return model.init(jax.random.PRNGKey(1), image, text)["params"]


@pytest.mark.integration
@pytest.mark.parametrize("make", [_captioner, _coca], ids=["captioner", "coca"])
def test_kv_cache_logits_equal_full_forward_at_every_position(make):
  """Acceptance 1: cached step-by-step logits == the full forward pass, 1e-5, float32."""
  model = make()
  image, text = _inputs()
  params = _params(model, image, text)
  memory = model.apply({"params": params}, image, method="encode")
  full = model.apply({"params": params}, memory, text, method="caption_logits")
  cache = decoding.init_cache(model, params, memory, L)
  prev = jnp.zeros((3,), jnp.int32)  # The start token is pad (0).
  for t in range(L):
    logp, cache = decoding.step(model, params, memory, cache, prev)
    np.testing.assert_allclose(logp, jax.nn.log_softmax(full[:, t]), atol=1e-5, rtol=1e-5)
    prev = text[:, t]


@pytest.mark.integration
@pytest.mark.slow  # Over 10 s on 2 cores: the default suite stays under 10 minutes.
def test_greedy_logprob_is_the_teacher_forced_logprob_and_beam1_is_greedy():
  model = _captioner()
  image, text = _inputs(4)
  params = _params(model, image, text)
  memory = model.apply({"params": params}, image, method="encode")
  tokens, lp = decoding.greedy(model, params, memory, max_len=L, eos_id=2)
  assert tokens.shape == (4, L) and tokens.dtype == jnp.int32
  tf = decoding.sequence_logprob(model, params, memory, tokens, eos_id=2)
  np.testing.assert_allclose(lp, tf, rtol=1e-5, atol=1e-5)
  beam_tokens, beam_lp = decoding.beam_search(model, params, memory, beam_size=1, max_len=L,
                                              eos_id=2)
  np.testing.assert_array_equal(beam_tokens, tokens)
  np.testing.assert_allclose(beam_lp, lp, rtol=1e-5)
  b4, lp4 = decoding.beam_search(model, params, memory, beam_size=4, max_len=L, eos_id=2)
  np.testing.assert_allclose(decoding.sequence_logprob(model, params, memory, b4, eos_id=2),
                             lp4, rtol=1e-5, atol=1e-5)
  assert (lp4 >= lp - 1e-5).all()


@pytest.mark.integration
@pytest.mark.slow  # 41 s of sampling compiles.
def test_sampling_honours_eos_temperature_and_top_k():
  model = _captioner()
  image, text = _inputs(8)
  params = _params(model, image, text)
  memory = model.apply({"params": params}, image, method="encode")
  a, _ = decoding.sample(model, params, memory, jax.random.PRNGKey(0), max_len=L, eos_id=2,
                         temperature=1.0)
  b, _ = decoding.sample(model, params, memory, jax.random.PRNGKey(1), max_len=L, eos_id=2,
                         temperature=1.0)
  assert not np.array_equal(a, b)
  for seq in np.asarray(a):  # After an EOS only padding.
    eos = np.flatnonzero(seq == 2)
    if eos.size:
      assert (seq[eos[0] + 1:] == 0).all()
  k1, _ = decoding.sample(model, params, memory, jax.random.PRNGKey(3), max_len=L, eos_id=2,
                          temperature=1.0, top_k=1)
  greedy, _ = decoding.greedy(model, params, memory, max_len=L, eos_id=2)
  np.testing.assert_array_equal(k1, greedy)  # top_k=1 sampling is greedy.


@pytest.mark.unit
def test_caption_loss_masks_padding_after_eos():
  from bigvl.objectives.captioning import caption_loss
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 7)), jnp.float32)
  targets = jnp.asarray([[3, 4, 2, 0, 0], [5, 2, 0, 0, 0]])
  loss, _ = caption_loss(logits, targets)
  logp = jax.nn.log_softmax(logits)
  want = -np.mean([logp[0, 0, 3], logp[0, 1, 4], logp[0, 2, 2], logp[1, 0, 5], logp[1, 1, 2]])
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  changed = logits.at[:, 3:].set(100.0)  # Positions after EOS do not count.
  np.testing.assert_allclose(caption_loss(changed, targets)[0], loss, rtol=1e-6)


@pytest.mark.unit
def test_parallel_prediction_ignores_inputs_and_is_not_causal():
  model = _captioner()
  image, text = _inputs()
  params = _params(model, image, text)
  par = lambda t: model.apply({"params": params}, image, t, parallel=True)
  other = text.at[:, 1:].set(5)
  np.testing.assert_allclose(par(text), par(other), atol=1e-6)  # Inputs are all masked.
  causal = model.apply({"params": params}, image, text)
  changed = model.apply({"params": params}, image, text.at[:, 5].set(7))
  np.testing.assert_allclose(causal[:, :6], changed[:, :6], atol=1e-6)  # Causal: no peeking.


@pytest.mark.integration
@pytest.mark.slow  # ~50 s of compiling three models' gradients; the demos train all three.
def test_generative_objectives_give_finite_losses_and_gradients():
  image, text = _inputs()
  batch = {"image": image, "text": text}
  for name, model, opts in (("captioning", _captioner(), {}),
                            ("cappa", _captioner(), dict(parallel_fraction=0.5)),
                            ("coca", _coca(), {})):
    params = _params(model, image, text)
    obj = objectives.build(dict(name=name, **opts))
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: obj.loss(model, p, batch, jax.random.PRNGKey(0)), has_aux=True)(params)
    assert np.isfinite(loss) and loss > 0, name
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads)), name
  # CoCa's text embedding works without an image (zero-shot prompts).
  model = _coca()
  params = _params(model, image, text)
  _, ztxt, _ = model.apply({"params": params}, None, text)
  _, ztxt2, _ = model.apply({"params": params}, image, text)
  np.testing.assert_allclose(ztxt, ztxt2, atol=1e-6)
