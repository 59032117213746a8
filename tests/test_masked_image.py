"""MAE and SimMIM: token dropping, mask tokens, patch layout and the masked losses."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvl import models, objectives
from bigvl.models import layers
from bigvl.models.masked_image import patchify, unpatchify
from bigvl.models.vit import ViT
from bigvl.objectives.masking import num_kept, random_keep

ENC = dict(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=4)


def _images(b=4, size=16, c=1, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (b, size, size, c))


@pytest.mark.unit
def test_patchify_layout_and_inverse():
  img = np.arange(2 * 8 * 12 * 3, dtype=np.float32).reshape(2, 8, 12, 3)
  patches = np.asarray(patchify(jnp.asarray(img), 4))
  assert patches.shape == (2, 6, 48)
  # Patch r * cols + c holds image[4r:4r+4, 4c:4c+4], row-major, channels last.
  np.testing.assert_array_equal(patches[1, 1 * 3 + 2], img[1, 4:8, 8:12].reshape(-1))
  np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(patches), 4, 2, 3)), img)


@pytest.mark.integration
@pytest.mark.slow
def test_patchify_order_is_the_vit_token_order():
  # A ViT's patch embedding is a strided conv: token i must see exactly patchify's patch i.
  vit = ViT(**dict(ENC, depth=0), pool="none", posemb="sincos2d", final_norm=False)
  img = _images(2, 16, 3)
  params = jax.jit(vit.init)(jax.random.PRNGKey(0), img)["params"]
  tokens, _ = vit.apply({"params": params}, img)
  kernel = nn.unbox(params["embedding"]["kernel"]).reshape(-1, ENC["width"])
  bias = nn.unbox(params["embedding"]["bias"])
  pe = layers.posemb_sincos_2d(4, 4, ENC["width"])
  np.testing.assert_allclose(tokens, patchify(img, 4) @ kernel + bias + pe, atol=1e-5)


@pytest.mark.unit
@pytest.mark.parametrize("ratio,n", [(0.75, 16), (0.5, 16), (0.6, 49), (0.9, 196), (0.0, 16)])
def test_random_keep_counts_and_mask(ratio, n):
  keep, mask = random_keep(jax.random.PRNGKey(1), 3, n, ratio)
  k = round((1 - ratio) * n)
  assert keep.shape == (3, k) and mask.shape == (3, n)
  for i in range(3):
    assert len(set(np.asarray(keep[i]).tolist())) == k       # Distinct patches.
    assert set(np.flatnonzero(~np.asarray(mask[i]))) == set(np.asarray(keep[i]).tolist())
  assert not np.array_equal(keep[0], keep[1]) or k == n       # Per-example masks.


@pytest.mark.unit
def test_masking_ratio_errors():
  with pytest.raises(ValueError, match="must be in"):
    num_kept(16, 1.0)
  with pytest.raises(ValueError, match="no visible patch"):
    num_kept(4, 0.9)
  with pytest.raises(ValueError, match="mask_ratio|Masking ratio"):
    objectives.build(dict(name="mae", mask_ratio=1.2))


@pytest.mark.integration
@pytest.mark.slow
def test_vit_keep_all_in_order_is_the_plain_forward_and_is_permutation_equivariant():
  vit = ViT(**ENC, pool="none")
  img = _images(2)
  params = jax.jit(vit.init)(jax.random.PRNGKey(0), img)
  full, _ = vit.apply(params, img)
  same, _ = vit.apply(params, img, keep=jnp.tile(jnp.arange(16), (2, 1)))
  np.testing.assert_allclose(same, full, atol=1e-6)
  perm = jnp.stack([jax.random.permutation(jax.random.PRNGKey(i), 16) for i in range(2)])
  permuted, _ = vit.apply(params, img, keep=perm)
  np.testing.assert_allclose(permuted, jnp.take_along_axis(full, perm[..., None], 1), atol=1e-5)


def _encoder_token_counts(fn):
  """Calls fn() and returns the token count of every input to a module named `encoder`."""
  seen = []

  def spy(next_fun, args, kwargs, context):
    if context.module.name == "encoder" and context.method_name == "__call__":
      seen.append(args[0].shape[1])
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(spy):
    fn()
  return seen


@pytest.mark.integration
@pytest.mark.parametrize("ratio", [0.75, pytest.param(0.5, marks=pytest.mark.slow),
                                   pytest.param(0.3, marks=pytest.mark.slow)])
def test_mae_encoder_receives_round_1_minus_ratio_tokens(ratio):
  model = models.build(dict(name="mae", encoder=ENC, decoder_width=16, decoder_depth=1,
                            decoder_mlp_dim=32, decoder_heads=2, channels=1))
  obj = objectives.build(dict(name="mae", mask_ratio=ratio))
  img = _images(4)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), img)["params"]
  # Traced, not run: the spy sees every module call's input shapes.
  counts = _encoder_token_counts(lambda: jax.eval_shape(
      lambda p: obj.loss(model, p, {"image": img}, jax.random.PRNGKey(3)), params))
  # The ViT's encoder sees the kept tokens; the decoder (named "decoder") sees all 16.
  assert counts == [round((1 - ratio) * 16)]


def _mae_setup(ratio=0.75):
  model = models.build(dict(name="mae", encoder=ENC, decoder_width=16, decoder_depth=1,
                            decoder_mlp_dim=32, decoder_heads=2, channels=1))
  img = _images(4)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), img)["params"]
  return model, params, img


@pytest.mark.integration
@pytest.mark.slow  # 39 s.
def test_mae_loss_ignores_visible_patches():
  model, params, img = _mae_setup()
  rng = jax.random.PRNGKey(5)
  base = objectives.build(dict(name="mae", mask_ratio=0.75))
  # The objective's own masking draw: the first half of its rng split.
  _, mask = random_keep(jax.random.split(rng)[0], 4, 16, 0.75)
  mask = np.asarray(mask)

  def with_target_change(where):
    @dataclasses.dataclass(frozen=True)
    class Changed(type(base)):
      def targets(self, model, image):
        t = super().targets(model, image)
        return t + 100.0 * jnp.asarray(where)[..., None]
    obj = Changed(mask_ratio=0.75)
    return jax.jit(lambda p: obj.loss(model, p, {"image": img}, rng)[0])(params)

  loss = jax.jit(lambda p: base.loss(model, p, {"image": img}, rng)[0])(params)
  assert float(with_target_change(~mask)) == float(loss)      # Visible patches: ignored.
  one_masked = np.zeros_like(mask)
  one_masked[0, np.flatnonzero(mask[0])[0]] = True
  assert float(with_target_change(one_masked)) > float(loss) + 1.0


@pytest.mark.integration
@pytest.mark.slow
def test_mae_loss_is_the_mse_to_per_patch_normalised_pixels():
  model, params, img = _mae_setup()
  rng = jax.random.PRNGKey(5)
  loss, _ = objectives.build(dict(name="mae")).loss(model, params, {"image": img}, rng)
  keep, mask = random_keep(jax.random.split(rng)[0], 4, 16, 0.75)
  pred = np.asarray(model.apply({"params": params}, img, keep), np.float64)
  t = np.asarray(patchify(img, 4), np.float64)
  t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-6)
  err = ((pred - t) ** 2).mean(-1)
  np.testing.assert_allclose(float(loss), err[np.asarray(mask)].mean(), rtol=1e-5)


@pytest.mark.integration
@pytest.mark.slow
def test_simmim_masked_patches_enter_as_the_mask_token():
  model = models.build(dict(name="simmim", encoder=ENC, channels=1))
  img = _images(2)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), img)["params"]
  _, mask = random_keep(jax.random.PRNGKey(2), 2, 16, 0.6)
  # Pixels of masked patches cannot reach the output.
  noise = unpatchify(jnp.where(mask[..., None], 5.0, 0.0) * jnp.ones((2, 16, 16)), 4, 4, 4)
  a = model.apply({"params": params}, img, mask)
  b = model.apply({"params": params}, img + noise, mask)
  np.testing.assert_allclose(a, b, atol=1e-6)
  assert not np.allclose(a, model.apply({"params": params}, img))  # Without the mask they do.


@pytest.mark.integration
@pytest.mark.slow
def test_simmim_loss_is_l1_on_masked_pixels_only():
  model = models.build(dict(name="simmim", encoder=ENC, channels=1))
  img = _images(4)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), img)["params"]
  rng = jax.random.PRNGKey(7)
  loss, _ = objectives.build(dict(name="simmim", mask_ratio=0.6)).loss(
      model, params, {"image": img}, rng)
  _, mask = random_keep(jax.random.split(rng)[0], 4, 16, 0.6)
  pred = np.asarray(model.apply({"params": params}, img, mask), np.float64)
  err = np.abs(pred - np.asarray(patchify(img, 4))).mean(-1)
  np.testing.assert_allclose(float(loss), err[np.asarray(mask)].mean(), rtol=1e-5)


@pytest.mark.unit
def test_masked_image_encoder_rejects_a_pooling_head():
  with pytest.raises(ValueError, match="pool"):
    models.build(dict(name="mae", encoder=dict(ENC, pool="map"))).init(
        jax.random.PRNGKey(0), _images(1))


@pytest.mark.integration
@pytest.mark.slow
def test_learned_posemb_resizes_to_another_grid():
  vit = ViT(**ENC, pool="gap")
  params = jax.jit(vit.init)(jax.random.PRNGKey(0), _images(1, 16))
  out, _ = vit.apply(params, _images(2, 8))        # 2x2 patches from a 4x4 table.
  assert out.shape == (2, ENC["width"]) and np.all(np.isfinite(out))
