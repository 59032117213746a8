"""Output shapes of every model and pooling variant, via init/apply on tiny sizes."""

import jax
import jax.numpy as jnp
import pytest

from bigvl import models
from bigvl.models import sizes
from bigvl.models.text import TextTransformer
from bigvl.models.two_towers import TwoTowers
from bigvl.models.vit import ViT

pytestmark = pytest.mark.unit

TINY = dict(width=32, depth=2, mlp_dim=64, num_heads=4)


def _apply(model, *args):
  """Output shapes only: tracing, no compilation (compiling each variant costs seconds)."""
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
  return jax.eval_shape(model.apply, variables, *args)


@pytest.mark.parametrize("pool,expected", [("cls", (2, 32)), ("gap", (2, 32)), ("map", (2, 32)),
                                           ("none", (2, 16, 32))])
def test_vit_pool_shapes(pool, expected):
  out, extras = _apply(ViT(**TINY, patch_size=4, pool=pool), jnp.zeros((2, 16, 16, 3)))
  assert out.shape == expected
  n_tokens = 16 + (pool == "cls")
  assert extras["tokens"].shape == (2, n_tokens, 32)


@pytest.mark.parametrize("posemb", ["learn", "sincos2d"])
def test_vit_head_and_posemb(posemb):
  out, extras = _apply(ViT(**TINY, patch_size=8, posemb=posemb, num_classes=10),
                       jnp.ones((3, 32, 16, 1)))
  assert out.shape == (3, 10)
  assert extras["pre_logits"].shape == (3, 32)


@pytest.mark.parametrize("pool,causal", [("last", False), ("eos", True), ("first", False),
                                         ("gap", False), ("map", False)])
def test_text_shapes(pool, causal):
  tokens = jnp.array([[5, 6, 2, 0, 0], [7, 2, 0, 0, 0]])
  out, extras = _apply(TextTransformer(vocab_size=10, max_len=8, pool=pool, causal=causal,
                                       **TINY), tokens)
  assert out.shape == (2, 32)
  assert extras["tokens"].shape == (2, 5, 32)


def test_text_eos_pooling_picks_eos_position():
  tokens = jnp.array([[5, 6, 2, 0, 0]])
  model = TextTransformer(vocab_size=10, max_len=8, pool="eos", causal=True, **TINY)
  variables = model.init(jax.random.PRNGKey(0), tokens)
  pooled, extras = model.apply(variables, tokens)
  assert jnp.allclose(pooled[0], extras["tokens"][0, 2])


def test_two_towers_shapes_and_normalisation():
  model = TwoTowers(image=dict(**TINY, patch_size=4, pool="map"),
                    text=dict(**TINY, vocab_size=20, max_len=8), embed_dim=16,
                    temperature_init=10.0, bias_init=-10.0)
  image, text = jnp.ones((4, 8, 8, 1)), jnp.ones((4, 6), jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), image, text)
  zimg, ztxt, extras = model.apply(variables, image, text)
  assert zimg.shape == ztxt.shape == (4, 16)
  assert jnp.allclose(jnp.linalg.norm(zimg, axis=-1), 1.0, atol=1e-5)
  assert jnp.allclose(jnp.linalg.norm(ztxt, axis=-1), 1.0, atol=1e-5)
  assert jnp.allclose(extras["t"], 10.0) and jnp.allclose(extras["b"], -10.0)
  zimg_only, ztxt_none, _ = model.apply(variables, image, None)
  assert ztxt_none is None and jnp.allclose(zimg_only, zimg)


def test_variant_sizes_and_eval_shape_of_b16():
  assert sizes.parse_variant("B/16") == dict(width=768, depth=12, mlp_dim=3072, num_heads=12,
                                             patch_size=16)
  model = ViT(variant="B/16", pool="cls")
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  n = sum(x.size for x in jax.tree.leaves(shapes))
  # ViT-B/16 without a head: 85.8M params (ViT paper: 86M with its head).
  assert 85_000_000 < n < 86_500_000


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match="Unknown model size 'Q'"):
    sizes.parse_variant("Q/16")
  with pytest.raises(ValueError, match="Unknown option 'widht'.*'width'"):
    models.build(dict(name="two_towers", image=dict(widht=3), text=None)).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="Unknown model 'vitt'.*'vit'"):
    models.build(dict(name="vitt"))
