"""NaFlex (SigLIP 2's native aspect ratio ViT input): padding has no effect, on XLA and on the
Pallas attention kernel; the per-image position resize is torch's antialiased bilinear
interpolate; at the table's own grid NaFlex is the fixed-size ViT; bad input is refused."""

import jax
import numpy as np
import pytest

from bigvl.models.vit import ViT, naflex_mask, naflex_posemb_weights

pytestmark = pytest.mark.unit

P = 4


def patchify(img):
  """(h, w, c) -> (rows * cols, p*p*c), row-major patches flattened (row, col, channel)."""
  h, w, c = img.shape
  return img.reshape(h // P, P, w // P, P, c).transpose(0, 2, 1, 3, 4).reshape(-1, P * P * c)


def vit(impl="xla", pool="map"):
  return ViT(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=P, pool=pool,
             posemb_grid=4, attention_impl=impl)


@pytest.mark.parametrize("impl,pool", [("xla", "map"), ("xla", "gap"), ("pallas", "map")])
def test_padding_and_batch_mates_do_not_change_an_image(impl, pool):
  rng = np.random.default_rng(0)
  tall = rng.normal(size=(6 * P, 2 * P, 3)).astype(np.float32)   # 6 x 2 patches
  wide = rng.normal(size=(3 * P, 5 * P, 3)).astype(np.float32)   # 3 x 5
  n = 24                                                          # 12 and 9 rows of padding
  batch = np.zeros((2, n, P * P * 3), np.float32)
  batch[0, :12], batch[1, :15] = patchify(tall), patchify(wide)
  # Padding rows hold garbage: they must not matter either.
  batch[0, 12:] = rng.normal(size=(n - 12, P * P * 3))
  batch[1, 15:] = rng.normal(size=(n - 15, P * P * 3))
  shapes = np.array([[6, 2], [3, 5]], np.int32)
  model = vit(impl, pool)
  params = model.init(jax.random.PRNGKey(0), batch, spatial_shapes=shapes)
  both, extras = model.apply(params, batch, spatial_shapes=shapes)
  np.testing.assert_array_equal(np.asarray(extras["mask"]), np.arange(n)[None] < [[12], [15]])
  for i, (img, shape) in enumerate(((tall, [6, 2]), (wide, [3, 5]))):
    alone, _ = model.apply(params, patchify(img)[None], spatial_shapes=np.array([shape]))
    np.testing.assert_allclose(np.asarray(both[i]), np.asarray(alone[0]), atol=1e-5, rtol=0)
  assert float(np.abs(np.asarray(both[0] - both[1])).max()) > 1e-3   # Not trivially equal.


def test_at_the_tables_grid_naflex_is_the_fixed_size_vit():
  rng = np.random.default_rng(1)
  images = rng.normal(size=(2, 4 * P, 4 * P, 3)).astype(np.float32)
  model = vit()
  params = model.init(jax.random.PRNGKey(0), images)          # Initialised on images.
  want, _ = model.apply(params, images)
  got, _ = model.apply(params, np.stack([patchify(x) for x in images]),
                       spatial_shapes=np.array([[4, 4], [4, 4]]))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(4, 4), (2, 6), (7, 3), (1, 9)])
def test_position_resize_is_torch_antialiased_bilinear(shape):
  from bigvl.convert import testing
  testing.import_torch_references()
  import torch
  grid, d = 5, 3
  table = np.random.default_rng(2).normal(size=(grid, grid, d)).astype(np.float32)
  want = torch.nn.functional.interpolate(
      torch.from_numpy(table).permute(2, 0, 1)[None], size=shape, mode="bilinear",
      align_corners=False, antialias=True)[0].permute(1, 2, 0).reshape(-1, d).numpy()
  n = shape[0] * shape[1] + 3
  w = np.asarray(naflex_posemb_weights(grid, np.array([shape]), n))[0]
  got = w @ table.reshape(-1, d)
  np.testing.assert_allclose(got[:shape[0] * shape[1]], want, atol=1e-5)
  np.testing.assert_allclose(got[-3:], np.broadcast_to(got[0], (3, d)))   # Padding: patch 0's.
  assert np.asarray(naflex_mask(np.array([shape]), n))[0].sum() == shape[0] * shape[1]


@pytest.mark.parametrize("kw,shapes,match", [
    (dict(posemb_grid=None), np.array([[2, 2]]), "posemb_grid set"),
    (dict(pool="cls"), np.array([[2, 2]]), "pool in gap, map, none"),
    ({}, np.array([2, 2]), r"spatial_shapes has shape \(2,\); expected \(batch, 2\)"),
])
def test_bad_naflex_input_is_explained(kw, shapes, match):
  opts = dict(width=32, depth=1, mlp_dim=64, num_heads=4, patch_size=P, pool="map",
              posemb_grid=4)
  opts.update(kw)
  with pytest.raises(ValueError, match=match):
    ViT(**opts).init(jax.random.PRNGKey(0), np.zeros((1, 4, P * P * 3), np.float32),
                     spatial_shapes=shapes)


def test_naflex_grid_matches_siglip2_image_processor():
  from bigvl.convert import testing
  testing.import_torch_references()
  from transformers.models.siglip2.image_processing_siglip2 import (
      get_image_size_for_max_num_patches)
  from bigvl.data.transforms import naflex_grid
  rng = np.random.default_rng(3)
  cases = [(224, 224, 16, 256), (100, 400, 16, 256), (37, 5, 4, 20), (16, 16, 4, 16),
           (3000, 20, 14, 729), (1, 1, 16, 64)]
  cases += [tuple(int(v) for v in (rng.integers(1, 800), rng.integers(1, 800),
                                   rng.choice([4, 14, 16]), rng.integers(1, 1025)))
            for _ in range(40)]
  for h, w, p, budget in cases:
    th, tw = get_image_size_for_max_num_patches(h, w, p, budget)
    rows, cols = naflex_grid(h, w, p, budget)
    assert (rows * p, cols * p) == (th, tw), (h, w, p, budget)
    assert rows * cols <= budget or rows * cols == 1


def test_naflex_pp_op_cuts_pads_and_keeps_uint8():
  from bigvl.data import transforms
  img = np.random.default_rng(4).integers(0, 256, size=(12, 30, 3), dtype=np.uint8)
  op = transforms.naflex(patch_size=P, max_patches=20)
  out = op({"image": img}, None)
  rows, cols = out["image_shapes"]
  assert (rows, cols) == transforms.naflex_grid(12, 30, P, 20) and rows * cols <= 20
  assert out["image"].shape == (20, P * P * 3) and out["image"].dtype == np.uint8
  resized = transforms.keep_uint8(transforms.resize_bilinear(img, rows * P, cols * P), img)
  np.testing.assert_array_equal(out["image"][:rows * cols], patchify(resized))
  assert not out["image"][rows * cols:].any()
  with pytest.raises(ValueError, match="max_patches=0"):
    transforms.naflex(patch_size=P, max_patches=0)
