"""bigvl -> HF -> bigvl: HF transformers loads the export, computes the same outputs, and the
weights it saves convert back into bit-identical bigvl parameters.

Parity tolerance of the exported model: max |HF - bigvl| <= 1e-5 on normalised embeddings
and logits, float32.
"""

import json

import numpy as np
import pytest

from bigvl.convert import testing

testing.import_torch_references()

import open_clip  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bigvl import convert  # noqa: E402
from bigvl.convert import bigvl_io, common  # noqa: E402

pytestmark = pytest.mark.unit

TOL = 1e-5
CLIP_CFG = dict(
    name="two_towers",
    image=dict(width=64, depth=2, mlp_dim=128, num_heads=4, patch_size=8, pool="cls",
               cls_posemb=True, pre_norm=True, norm_pooled=True, patch_bias=False,
               act="quick_gelu", ln_eps=1e-5),
    text=dict(vocab_size=49408, width=32, depth=2, mlp_dim=64, num_heads=2, max_len=77,
              causal=True, pool="eos", eos_id=49407, act="quick_gelu", ln_eps=1e-5),
    embed_dim=48, image_proj_bias=False, text_proj_bias=False, temperature_init=1 / 0.07,
    bias_init=None)
SIGLIP_CFG = dict(
    name="two_towers",
    image=dict(width=64, depth=2, mlp_dim=128, num_heads=4, patch_size=8, pool="map",
               act="gelu_tanh", ln_eps=1e-6),
    text=dict(vocab_size=1000, width=64, depth=2, mlp_dim=128, num_heads=4, max_len=16,
              pool="last", num_classes=64, act="gelu_tanh", ln_eps=1e-6),
    embed_dim=None, temperature_init=10.0, bias_init=-10.0)


def random_bigvl_checkpoint(cfg, meta, path, seed=0):
  """Writes a bigvl checkpoint whose every parameter is random (no zeros, no ones)."""
  flat = testing.random_params(cfg, meta, seed)
  bigvl_io.save_converted(str(path), cfg, flat, meta, progress=lambda _: None)
  return flat


def roundtrip(cfg, meta, tmp_path, hf_class, ids):
  original = random_bigvl_checkpoint(cfg, meta, tmp_path / "bigvl")
  convert.to_hf(str(tmp_path / "bigvl"), str(tmp_path / "hf"), progress=lambda _: None)

  ref, info = hf_class.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
  assert not any(info.values()), f"HF loading reported {info}"
  ref.eval()
  s = meta["image_size"]
  images = np.random.default_rng(1).standard_normal((2, 3, s, s)).astype(np.float32)
  with torch.no_grad():
    want = ref(input_ids=torch.from_numpy(ids).long(), pixel_values=torch.from_numpy(images))
  model, params = convert.load_converted(str(tmp_path / "bigvl"))
  got = testing.two_towers_outputs(model, params, images, ids)
  testing.assert_embeddings_close(got, want, TOL)

  # HF writes its own copy; converting that back gives the very same bits.
  ref.save_pretrained(tmp_path / "hf_saved")
  convert.from_hf(str(tmp_path / "hf_saved"), str(tmp_path / "bigvl_again"),
                  progress=lambda _: None)
  _, again = convert.load_converted(str(tmp_path / "bigvl_again"))
  again = common.flatten(again)
  assert sorted(again) == sorted(original)
  for path, value in original.items():
    back = np.asarray(again[path])
    assert back.dtype == value.dtype and back.shape == value.shape, path
    assert np.array_equal(back.view(np.uint32), value.view(np.uint32)), f"{path} changed"
  with open(tmp_path / "bigvl_again" / "config.json") as f:
    assert common.canonical_config(json.load(f)) == common.canonical_config(cfg)


def test_clip_roundtrip_is_bit_exact(tmp_path):
  ids = open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat", "a dog"]).numpy()
  roundtrip(CLIP_CFG, dict(image_size=32, text_len=77), tmp_path, transformers.CLIPModel, ids)


def test_siglip_roundtrip_is_bit_exact(tmp_path):
  ids = testing.token_ids(3, 16, 1000, eos=1, pad=1)
  roundtrip(SIGLIP_CFG, dict(image_size=32, text_len=16), tmp_path, transformers.SiglipModel,
            ids)


def test_export_refuses_what_hf_cannot_express(tmp_path):
  cfg = dict(CLIP_CFG, image=dict(CLIP_CFG["image"], pool="gap", cls_posemb=False))
  random_bigvl_checkpoint(cfg, dict(image_size=32, text_len=77), tmp_path / "bigvl")
  with pytest.raises(convert.ConversionError, match=r"HF CLIPModel cannot express model option "
                     r"image.pool='gap' \(it would be 'cls'\)"):
    convert.to_hf(str(tmp_path / "bigvl"), str(tmp_path / "hf"), family="clip",
                  progress=lambda _: None)
  assert not (tmp_path / "hf").exists()
