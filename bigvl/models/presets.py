"""Model configs of the published CLIP and SigLIP models, by variant: `clip("B/16")`.

Each returns a `two_towers` model config (a plain dict for `bigvl.models.build`) whose parameter
count equals the reference's (tests/test_model_sizes.py). Inputs the references were trained on:
CLIP 224px images and 77 tokens; SigLIP 224px (or 256/384/512) images and 64 tokens.
"""

from __future__ import annotations

from bigvl.models import sizes

# CLIP's text tower per image size (OpenAI CLIP, open_clip): size name, or explicit
# (width, depth, mlp_dim, num_heads) where no table row fits (bigG's text has 20 heads).
_CLIP_TEXT = {"S": "S", "M": "M", "B": "M", "L": "B", "H": "L", "g": "L",
              "G": (1280, 32, 5120, 20)}


def _dims(size) -> dict[str, int]:
  if isinstance(size, str):
    return sizes.parse_variant(size)
  width, depth, mlp_dim, heads = size
  return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads)


def clip(variant: str = "B/16", **overrides) -> dict:
  """CLIP (OpenAI / open_clip / HF CLIPModel) in bigvl; e.g. "B/32", "L/14", "G/14".

  Image tower: class token with its own position, ln_pre, QuickGELU as OpenAI trained it.
  Text tower: causal, pooled at the EOS token (the highest id of CLIP's vocabulary).
  `overrides` replace top-level keys (e.g. embed_dim=...).
  """
  size, _, patch = variant.partition("/")
  if size not in _CLIP_TEXT or not patch:
    raise ValueError(f"No CLIP preset {variant!r}; give one of "
                     f"{', '.join(s + '/<patch>' for s in _CLIP_TEXT)}, e.g. 'B/16'.")
  text = _dims(_CLIP_TEXT[size])
  common = dict(act="quick_gelu", ln_eps=1e-5)
  cfg = dict(
      name="two_towers",
      image=dict(variant=variant, pool="cls", cls_posemb=True, pre_norm=True, patch_bias=False,
                 **common),
      text=dict(text, vocab_size=49408, max_len=77, causal=True, pool="argmax", **common),
      embed_dim=text["width"],
      image_proj_bias=False,
      text_proj_bias=False,
      temperature_init=1 / 0.07,
      bias_init=None,
  )
  cfg.update(overrides)
  return cfg


def siglip(variant: str = "B/16", **overrides) -> dict:
  """SigLIP (big_vision / HF SiglipModel); e.g. "B/16", "L/16", "So400m/14".

  Both towers have the image tower's size; the image is pooled by a MAP head, the text by
  its last token followed by a biased linear head to the embedding (width-sized).
  """
  dims = sizes.parse_variant(variant)
  if "patch_size" not in dims:
    raise ValueError(f"SigLIP preset {variant!r} needs a patch size, e.g. 'So400m/14'.")
  common = dict(act="gelu_tanh", ln_eps=1e-6)
  text = {k: v for k, v in dims.items() if k != "patch_size"}
  cfg = dict(
      name="two_towers",
      image=dict(variant=variant, pool="map", **common),
      text=dict(text, vocab_size=32000, max_len=64, pool="last", num_classes=dims["width"],
                **common),
      embed_dim=None,
      temperature_init=10.0,
      bias_init=-10.0,
  )
  cfg.update(overrides)
  return cfg

