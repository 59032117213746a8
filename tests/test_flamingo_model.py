"""Flamingo (bigvl/models/flamingo.py): init equals the LM, image causality, the media mask,
the Perceiver resampler, and the `lm/` param tree."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvl import models
from bigvl.models.flamingo import (Flamingo, GatedCrossAttentionDense, PerceiverResampler,
                                   gates_closed, media_attend_mask)
from bigvl.models.lm import CausalLM

pytestmark = pytest.mark.unit

IMG = 1
LM = dict(vocab_size=16, width=32, depth=2, mlp_dim=64, num_heads=2, max_len=16)
OPTS = dict(vision=dict(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=4), lm=LM,
            resampler=dict(depth=1, num_heads=2, mlp_dim=32, num_latents=4, max_frames=2),
            xattn=dict(num_heads=2, mlp_dim=32), image_token_id=IMG)
# "<img> a b c <img> d e <img> f g": image j's marker is at MARKERS[j].
TOKENS = jnp.array([[IMG, 5, 6, 7, IMG, 8, 9, IMG, 10, 11]] * 2, jnp.int32)
MARKERS = (0, 4, 7)
MODEL = Flamingo(**OPTS)
APPLY = jax.jit(MODEL.apply)


def key(seed=0):
  # Param init compiles one RNG kernel per param: rbg's compile in a fraction of threefry's time.
  return jax.random.key(seed, impl="unsafe_rbg")


def images(seed, m=3):
  return jax.random.normal(jax.random.PRNGKey(seed), (2, m, 8, 8, 3))


def with_gates(params):
  """Non-zero gates (tanh 0.46 / 0.76), so that images change the logits."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x + (0.5 if p[-1].key == "alpha_attn" else 1.0)
      if p[-1].key.startswith("alpha_") else x, params)


@pytest.fixture(scope="module")
def params():
  return nn.unbox(jax.jit(MODEL.init)(key(), images(0), TOKENS)["params"])


def test_init_logits_equal_the_standalone_lm_exactly(params):
  ref = jax.jit(CausalLM(**LM).apply)({"params": params["lm"]}, TOKENS)
  for seed in (1, 2):
    out = APPLY({"params": params}, images(seed), TOKENS)
    assert out.shape == (2, 10, 16) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, ref)


def test_closed_gates_give_the_lm_back_whatever_the_images(params):
  """The no-vision control: a trained-looking model (open gates, images matter) with its
  gates closed computes the standalone LM's logits exactly, and every other param is kept."""
  opened = with_gates(params)
  assert np.abs(APPLY({"params": opened}, images(1), TOKENS)
                - APPLY({"params": opened}, images(2), TOKENS)).max() > 0
  closed = gates_closed(opened)
  ref = jax.jit(CausalLM(**LM).apply)({"params": params["lm"]}, TOKENS)
  for seed in (1, 2):
    np.testing.assert_array_equal(APPLY({"params": closed}, images(seed), TOKENS), ref)
  gates = [p for p, _ in jax.tree_util.tree_leaves_with_path(closed)
           if p[-1].key.startswith("alpha_")]
  assert len(gates) == 2 * len([k for k in params if k.startswith("xattn")]) > 0
  same = jax.tree_util.tree_map_with_path(
      lambda p, a, b: p[-1].key.startswith("alpha_") or bool((a == b).all()), closed, opened)
  assert all(jax.tree_util.tree_leaves(same))


def test_gate_init_opens_the_gates_from_the_start():
  model = Flamingo(**{**OPTS, "xattn": dict(OPTS["xattn"], gate_init=0.5)})
  opened = nn.unbox(jax.jit(model.init)(key(), images(0), TOKENS)["params"])
  gates = [float(x) for p, x in jax.tree_util.tree_leaves_with_path(opened)
           if p[-1].key.startswith("alpha_")]
  assert gates and all(g == 0.5 for g in gates)
  apply = jax.jit(model.apply)
  assert np.abs(apply({"params": opened}, images(1), TOKENS)
                - apply({"params": opened}, images(2), TOKENS)).max() > 1e-4


def test_images_matter_once_gated_and_future_images_never_matter(params):
  """(a) Causality w.r.t. images, exact: changing image j leaves the logits of every token
  before image j's marker bit-identical (the cross-attention mask hides image j from them
  and the LM's self-attention is causal). (b) Changing an image the tokens do see changes
  their logits, so (a) is not trivially true."""
  p = {"params": with_gates(params)}
  base = APPLY(p, images(1), TOKENS)
  for j, marker in enumerate(MARKERS):
    changed = images(1).at[:, j].set(images(10 + j)[:, j])
    out = APPLY(p, changed, TOKENS)
    np.testing.assert_array_equal(out[:, :marker], base[:, :marker])
    assert np.abs(out[:, marker:] - base[:, marker:]).max(axis=-1).min() > 0


def test_last_and_all_previous_modes_differ_only_after_the_second_image(params):
  """Up to image 1's marker both modes let each token see image 0 only (identical logits);
  after it, "all_previous" also reads image 0, "last" only image 1."""
  p = {"params": with_gates(params)}
  last = APPLY(p, images(1), TOKENS)
  every = jax.jit(Flamingo(**OPTS, media_mode="all_previous").apply)(p, images(1), TOKENS)
  np.testing.assert_array_equal(every[:, :MARKERS[1]], last[:, :MARKERS[1]])
  assert np.abs(every[:, MARKERS[1]:] - last[:, MARKERS[1]:]).max(axis=-1).min() > 0


def test_gated_cross_attention_reads_only_the_allowed_images():
  """The paper's "last" property, where it holds exactly: the gated layer's output at token t
  depends on image c_t - 1 only (no other image), and a token before the first image gets
  zero cross-attention output (with alpha_ff = 0 it passes through unchanged). At the model
  level an earlier image still reaches later tokens through the LM's self-attention over the
  text in between, so there only future images are excluded (test above)."""
  tokens = jnp.array([[5, IMG, 6, 7, IMG, 8, IMG, 9]], jnp.int32)
  mask = media_attend_mask(tokens, IMG, 3)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 32))
  media = jax.random.normal(jax.random.PRNGKey(1), (1, 3, 5, 16))
  layer = GatedCrossAttentionDense(num_heads=2, mlp_dim=32)
  apply = jax.jit(layer.apply)
  p = nn.unbox(jax.jit(layer.init)(key(2), x, media, mask)["params"])
  np.testing.assert_array_equal(apply({"params": p}, x, media, mask), x)  # Gates at 0.
  p = dict(p, alpha_attn=jnp.float32(1.0))                 # alpha_ff stays 0.
  base = apply({"params": p}, x, media, mask)
  np.testing.assert_array_equal(base[:, 0], x[:, 0])      # Sees no image.
  sees = np.argmax(np.asarray(mask[0]), axis=-1)          # Each token's image (token 0: none).
  for j in range(3):
    out = apply({"params": p}, x, media.at[:, j].add(1.0), mask)
    for t in range(1, 8):
      if sees[t] == j:
        assert np.abs(out[0, t] - base[0, t]).max() > 0
      else:
        np.testing.assert_array_equal(out[0, t], base[0, t])


@pytest.mark.parametrize("mode", ["last", "all_previous"])
def test_media_attend_mask_matches_a_loop(mode):
  rng = np.random.default_rng(0)
  tokens = rng.choice([IMG, 2, 3], p=[0.25, 0.4, 0.35], size=(64, 12))
  tokens[0] = 2                                          # A row without images.
  for num_media in (1, 3, 6):
    got = np.asarray(media_attend_mask(jnp.asarray(tokens), IMG, num_media, mode))
    want = np.zeros((64, 12, num_media), bool)
    for b in range(64):
      count = 0
      for t in range(12):
        count += tokens[b, t] == IMG
        for j in range(num_media):
          want[b, t, j] = j == count - 1 if mode == "last" else j < count
    np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="media_mode"):
    media_attend_mask(jnp.asarray(tokens), IMG, 3, "first")


def test_resampler_shapes_frames_and_token_counts():
  # Shapes only: traced (eval_shape), not compiled; the model tests run it for real.
  r = PerceiverResampler(depth=1, num_heads=2, mlp_dim=32, num_latents=4, max_frames=3)
  x = lambda t, v: jax.ShapeDtypeStruct((2, 2, t, v, 16), jnp.float32)
  p = jax.eval_shape(r.init, key(), x(1, 4))
  for t, v in ((1, 4), (3, 4), (1, 9)):              # Frames; vision tokens (two image sizes).
    assert jax.eval_shape(r.apply, p, x(t, v)).shape == (2, 2, 4, 16)
  with pytest.raises(ValueError, match="max_frames"):
    jax.eval_shape(r.apply, p, x(4, 4))


def test_video_and_image_sizes_through_encode_media(params):
  encode = lambda shape: jax.eval_shape(
      lambda imgs: MODEL.apply({"params": params}, imgs, method=Flamingo.encode_media),
      jax.ShapeDtypeStruct(shape, jnp.float32)).shape
  assert encode((2, 3, 2, 8, 8, 3)) == (2, 3, 4, 16)   # Clips of 2 frames (max_frames=2).
  assert encode((2, 1, 12, 12, 3)) == (2, 1, 4, 16)    # 9 vision tokens instead of 4.


def test_lm_params_have_the_standalone_tree_and_every_param_is_logical():
  boxed = jax.eval_shape(MODEL.init, jax.random.PRNGKey(0), images(0), TOKENS)["params"]
  lm = jax.eval_shape(CausalLM(**LM).init, jax.random.PRNGKey(0), TOKENS)["params"]
  shapes = lambda t: jax.tree.map(lambda x: x.shape, nn.unbox(t))
  assert shapes(boxed["lm"]) == shapes(lm)
  assert sorted(boxed) == ["lm", "resampler", "vision", "xattn0", "xattn1"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) and len(x.names) == x.value.ndim
             for x in leaves)
  every2 = jax.eval_shape(Flamingo(**OPTS, cross_every=2).init, jax.random.PRNGKey(0),
                          images(0), TOKENS)["params"]
  assert sorted(every2) == ["lm", "resampler", "vision", "xattn0"]


def test_config_errors_and_registry():
  init = lambda m: jax.eval_shape(m.init, jax.random.PRNGKey(0), images(0), TOKENS)
  with pytest.raises(ValueError, match="config.model.image_token_id"):
    init(Flamingo(**dict(OPTS, image_token_id=None)))
  with pytest.raises(ValueError, match="config.model.vision.pool"):
    init(Flamingo(**dict(OPTS, vision=dict(OPTS["vision"], pool="map"))))
  with pytest.raises(ValueError, match="config.model.xattn"):
    init(Flamingo(**dict(OPTS, xattn=dict(heads=2))))
  assert isinstance(models.build(dict(name="flamingo", **OPTS)), Flamingo)
