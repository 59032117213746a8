"""Size presets and parameter counts against the references (nothing is allocated).

bigvl counts come from `jax.eval_shape`; the references are built on torch's "meta" device.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvl.convert import testing

testing.import_torch_references()

import torch  # noqa: E402
import timm  # noqa: E402
import transformers  # noqa: E402
import open_clip  # noqa: E402

from bigvl import models  # noqa: E402
from bigvl.convert import bigvl_io  # noqa: E402
from bigvl.models import presets, sizes  # noqa: E402

# bigvl size -> the timm model that defines it (So400m: SigLIP's shape-optimised ViT).
TIMM = {"Ti": "vit_tiny_patch16_224", "S": "vit_small_patch16_224",
        "M": "vit_medium_patch16_gap_256", "B": "vit_base_patch16_224",
        "L": "vit_large_patch16_224", "H": "vit_huge_patch14_224",
        "g": "vit_giant_patch14_224", "G": "vit_gigantic_patch14_224",
        "So400m": "vit_so400m_patch14_siglip_224"}
# bigvl size -> an open_clip model config whose image tower has that size.
OPEN_CLIP = {"S": "ViT-S-16", "M": "ViT-M-16", "B": "ViT-B-16", "L": "ViT-L-14", "H": "ViT-H-14",
             "g": "ViT-g-14", "G": "ViT-bigG-14"}


def _count(model_cfg, image_size, text_len=None) -> int:
  meta = dict(image_size=image_size, text_len=text_len)
  return sum(int(np.prod(s)) for s in bigvl_io.abstract_params(model_cfg, meta).values())


def _torch_count(build) -> int:
  with torch.device("meta"):
    module = build()
  return sum(p.numel() for p in module.parameters())


@pytest.mark.unit
@pytest.mark.parametrize("size", sorted(TIMM))
def test_size_table_matches_timm(size):
  with torch.device("meta"):
    ref = timm.create_model(TIMM[size], pretrained=False)
  block = ref.blocks[0]
  assert sizes.SIZES[size] == (ref.embed_dim, len(ref.blocks), block.mlp.fc1.out_features,
                               block.attn.num_heads)


@pytest.mark.unit
@pytest.mark.parametrize("size", sorted(OPEN_CLIP))
def test_size_table_matches_open_clip(size):
  cfg = open_clip.get_model_config(OPEN_CLIP[size])["vision_cfg"]
  width = cfg["width"]
  assert sizes.SIZES[size] == (width, cfg["layers"], int(width * cfg.get("mlp_ratio", 4.0)),
                               width // cfg.get("head_width", 64))


@pytest.mark.unit
@pytest.mark.parametrize("size,patch", [("Ti", 16), ("B", 16)])
def test_vit_param_count_equals_timm(size, patch):
  name = TIMM[size]
  cfg = dict(name="vit", variant=f"{size}/{patch}", pool="cls", cls_posemb=True, num_classes=1000)
  ref = _torch_count(lambda: timm.create_model(name, pretrained=False, num_classes=1000))
  assert _count(cfg, 224) == ref


@pytest.mark.unit
def test_clip_b16_param_count_equals_hf_and_open_clip():
  hf = _torch_count(lambda: transformers.CLIPModel(transformers.CLIPConfig(
      vision_config=dict(patch_size=16))))
  oc = _torch_count(lambda: open_clip.CLIP(**open_clip.get_model_config("ViT-B-16")))
  assert hf == oc == 149_620_737  # HF's model card number for openai/clip-vit-base-patch16.
  assert _count(presets.clip("B/16"), 224, 77) == hf


@pytest.mark.unit
def test_siglip_so400m_param_count_equals_hf():
  so400m = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                num_attention_heads=16)
  # google/siglip-so400m-patch14-384: 384px is not a multiple of 14; both drop the remainder.
  hf = _torch_count(lambda: transformers.SiglipModel(transformers.SiglipConfig(
      text_config=dict(so400m, vocab_size=32000, max_position_embeddings=64),
      vision_config=dict(so400m, patch_size=14, image_size=384))))
  assert _count(presets.siglip("So400m/14"), 384, 64) == hf


@pytest.mark.unit
def test_presets_build_and_run_tiny_shapes():
  # The presets are real model configs: they build, and embed a batch at the right width.
  cfg = presets.clip("B/32")
  out = jax.eval_shape(lambda: models.build(cfg).init_with_output(
      jax.random.PRNGKey(0), jnp.zeros((2, 224, 224, 3)), jnp.zeros((2, 77), jnp.int32))[0])
  assert out[0].shape == (2, 512) and out[1].shape == (2, 512)
  with pytest.raises(ValueError, match="No CLIP preset"):
    presets.clip("Ti/16")


@pytest.mark.unit
def test_variant_errors_name_the_fix():
  with pytest.raises(ValueError, match="valid sizes"):
    sizes.parse_variant("X/16")
  with pytest.raises(ValueError, match="Bad patch size"):
    sizes.parse_variant("B/p16")


@pytest.mark.unit
def test_open_clip_config_files_are_plain_json():
  # The converter reads these files without importing open_clip.
  path = os.path.join(os.path.dirname(open_clip.__file__), "model_configs", "ViT-B-32.json")
  with open(path) as f:
    assert json.load(f)["vision_cfg"]["patch_size"] == 32


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("size,patch", [("S", 16), ("M", 16), ("B", 32), ("L", 14), ("H", 14),
                                        ("g", 14), ("G", 14)])
def test_every_clip_preset_param_count_equals_open_clip(size, patch):
  name = {"G": "ViT-bigG-14"}.get(size, f"ViT-{size}-{patch}")
  oc = _torch_count(lambda: open_clip.CLIP(**open_clip.get_model_config(name)))
  assert _count(presets.clip(f"{size}/{patch}"), 224, 77) == oc
