"""HF transformers Siglip2Model (SigLIP 2, NaFlex) <-> bigvl: the same embeddings and logits
for a batch of images of different aspect ratios, and bigvl -> HF -> bigvl bit-identical.

Tolerance: max |bigvl - HF| <= 1e-5 on the normalised embeddings and on logits_per_image,
float32; 1e-4 on the image tokens (the real patches; padding rows are not compared). The
references have random weights (every parameter perturbed) and go through `save_pretrained`
and the converter. Each image's grid differs from the position table's (4 x 4) in both
directions, so the antialiased resize is checked shrinking and growing.
"""

import json
import math

import numpy as np
import pytest

from bigvl.convert import testing

testing.import_torch_references()

import torch  # noqa: E402
import transformers  # noqa: E402

from bigvl import convert  # noqa: E402
from bigvl.convert import bigvl_io, common  # noqa: E402

TOL = 1e-5
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
EOS = PAD = 1
PATCH = 4
# (rows, cols) of patches per image; at most MAX_PATCHES each, the rest padding.
SHAPES = ((4, 4), (2, 6), (6, 3), (3, 2))
MAX_PATCHES = 20


def naflex_batch(shapes=SHAPES, n=MAX_PATCHES, channels=3, seed=0, patch=PATCH):
  """(patches (b, n, p*p*c) float32, mask (b, n) int32, spatial_shapes (b, 2) int64), in
  Siglip2ImageProcessor's layout: each image cut row-major into patches flattened
  (row, col, channel), zero rows after its own."""
  rng = np.random.default_rng(seed)
  patches = np.zeros((len(shapes), n, patch * patch * channels), np.float32)
  mask = np.zeros((len(shapes), n), np.int32)
  for i, (h, w) in enumerate(shapes):
    img = rng.uniform(-1, 1, (h * patch, w * patch, channels)).astype(np.float32)
    cut = img.reshape(h, patch, w, patch, channels).transpose(0, 2, 1, 3, 4)
    patches[i, :h * w] = cut.reshape(h * w, -1)
    mask[i, :h * w] = 1
  return patches, mask, np.asarray(shapes, np.int64)


def bigvl_outputs(model, params, patches, shapes, ids):
  import jax
  from bigvl.models import two_towers

  @jax.jit
  def run(params, patches, shapes, ids):
    zimg, ztxt, extras = model.apply({"params": params}, patches, ids, image_shapes=shapes)
    return dict(image_embeds=zimg, text_embeds=ztxt,
                logits_per_image=two_towers.logits(zimg, ztxt, extras),
                img_tokens=extras["img/tokens"])

  with jax.default_matmul_precision("highest"):
    out = run(params, patches, np.asarray(shapes, np.int32), np.asarray(ids, np.int32))
  return {k: np.asarray(v) for k, v in out.items()}


def hf_outputs(ref, patches, mask, shapes, ids):
  with torch.no_grad():
    return ref(input_ids=torch.from_numpy(ids).long(), pixel_values=torch.from_numpy(patches),
               pixel_attention_mask=torch.from_numpy(mask),
               spatial_shapes=torch.from_numpy(shapes))


def assert_close(got, want, mask):
  testing.assert_embeddings_close(got, want, TOL)
  tokens = want.vision_model_output.last_hidden_state.numpy()
  real = mask.astype(bool)
  diff = testing.max_abs_diff(got["img_tokens"][real], tokens[real])
  assert diff <= 10 * TOL, f"image tokens: max abs diff {diff:.2e}"
  assert np.ptp(want.logits_per_image.numpy()) > 0.1  # Not a constant: the towers matter.


def converted_reference(cfg, tmp_path):
  """(a random-weight HF Siglip2Model of `cfg`, and the bigvl model and params converted
  from what it saved)."""
  torch.manual_seed(0)
  ref = transformers.Siglip2Model(cfg).eval()
  testing.randomize_(ref)
  with torch.no_grad():  # SigLIP's published initial values instead of HF's zeros.
    ref.logit_scale.fill_(math.log(10.0))
    ref.logit_bias.fill_(-10.0)
  ref.save_pretrained(tmp_path / "hf")
  model, params = convert.load_converted(
      convert.from_hf(str(tmp_path / "hf"), str(tmp_path / "bigvl"), progress=lambda _: None))
  return ref, model, params


def tiny_config(num_patches=16):
  return transformers.Siglip2Config(
      text_config=dict(TINY, vocab_size=1000, max_position_embeddings=16),
      vision_config=dict(TINY, patch_size=PATCH, num_patches=num_patches))


@pytest.mark.unit
@pytest.mark.parametrize("num_patches", [16, 9])
def test_tiny_siglip2_naflex_matches_hf(tmp_path, num_patches):
  cfg = tiny_config(num_patches)
  ref, model, params = converted_reference(cfg, tmp_path)
  with open(tmp_path / "bigvl" / "config.json") as f:
    assert json.load(f)["image"]["posemb_grid"] == math.isqrt(num_patches)

  ids = testing.token_ids(3, 16, 1000, eos=EOS, pad=PAD)
  patches, mask, shapes = naflex_batch()
  want = hf_outputs(ref, patches, mask, shapes, ids)
  got = bigvl_outputs(model, params, patches, shapes, ids)
  assert_close(got, want, mask)


SIGLIP2_CFG = dict(
    name="two_towers",
    image=dict(width=64, depth=2, mlp_dim=128, num_heads=4, patch_size=PATCH, pool="map",
               posemb_grid=4, act="gelu_tanh", ln_eps=1e-6),
    text=dict(vocab_size=1000, width=64, depth=2, mlp_dim=128, num_heads=4, max_len=16,
              pool="last", num_classes=64, act="gelu_tanh", ln_eps=1e-6),
    embed_dim=None, temperature_init=10.0, bias_init=-10.0)


@pytest.mark.unit
def test_siglip2_roundtrip_is_bit_identical(tmp_path):
  meta = dict(image_size=4 * PATCH, channels=3, text_len=16)
  original = testing.random_params(SIGLIP2_CFG, meta, seed=0)
  bigvl_io.save_converted(str(tmp_path / "bigvl"), SIGLIP2_CFG, original, meta,
                          progress=lambda _: None)
  convert.to_hf(str(tmp_path / "bigvl"), str(tmp_path / "hf"), family="siglip2",
                progress=lambda _: None)
  ref, info = transformers.Siglip2Model.from_pretrained(str(tmp_path / "hf"),
                                                        output_loading_info=True)
  assert not any(info.values()), f"HF loading reported {info}"
  ref.eval()
  ids = testing.token_ids(2, 16, 1000, eos=EOS, pad=PAD)
  patches, mask, shapes = naflex_batch(seed=1)
  model, params = convert.load_converted(str(tmp_path / "bigvl"))
  assert_close(bigvl_outputs(model, params, patches, shapes, ids),
               hf_outputs(ref, patches, mask, shapes, ids), mask)

  ref.save_pretrained(tmp_path / "hf_saved")
  convert.from_hf(str(tmp_path / "hf_saved"), str(tmp_path / "again"), progress=lambda _: None)
  _, again = convert.load_converted(str(tmp_path / "again"))
  again = common.flatten(again)
  assert sorted(again) == sorted(original)
  for path, value in original.items():
    back = np.asarray(again[path])
    assert back.shape == value.shape and np.array_equal(back.view(np.uint32),
                                                        value.view(np.uint32)), path


@pytest.mark.unit
def test_export_without_a_position_grid_is_explained(tmp_path):
  cfg = json.loads(json.dumps(SIGLIP2_CFG))
  del cfg["image"]["posemb_grid"]
  meta = dict(image_size=4 * PATCH, channels=3, text_len=16)
  bigvl_io.save_converted(str(tmp_path / "bigvl"), cfg, testing.random_params(cfg, meta), meta,
                          progress=lambda _: None)
  with pytest.raises(common.ConversionError, match="posemb_grid"):
    convert.to_hf(str(tmp_path / "bigvl"), str(tmp_path / "hf"), family="siglip2",
                  progress=lambda _: None)
  assert not (tmp_path / "hf").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_siglip2_b16_naflex_matches_hf(tmp_path):
  # Siglip2Config's defaults are SigLIP 2 B/16 NaFlex (a 16 x 16 position grid).
  cfg = transformers.Siglip2Config()
  ref, model, params = converted_reference(cfg, tmp_path)
  t = cfg.text_config
  ids = testing.token_ids(2, t.max_position_embeddings, t.vocab_size, eos=EOS, pad=PAD)
  patches, mask, shapes = naflex_batch(((16, 16), (8, 30), (20, 12)), n=256, patch=16)
  want = hf_outputs(ref, patches, mask, shapes, ids)
  got = bigvl_outputs(model, params, patches, shapes, ids)
  for name in ("image_embeds", "text_embeds", "logits_per_image"):
    print(name, testing.max_abs_diff(got[name], getattr(want, name).numpy()))
  assert_close(got, want, mask)
