"""HF transformers `Siglip2Model` (SigLIP 2, NaFlex) <-> bigvl `two_towers`.

Siglip2Model is SiglipModel (hf_siglip) but for its image embedding, which takes pre-cut
patches of any aspect ratio:
  - `patch_embedding` is a Linear on each patch flattened (row, col, channel): bigvl's patch
    Conv kernel (p, p, c, width), reshaped (`patch_linear` layout), so one bigvl model runs
    both fixed-size images and NaFlex patches;
  - `position_embedding` is a learned grid of side sqrt(num_patches), resized per image by
    an antialiased bilinear resize: bigvl's `pos_embedding` with `posemb_grid` set, resized
    by `vit.naflex_posemb_weights`;
  - padding patches are masked in every attention and in the MAP head.
The published fixed-resolution SigLIP 2 checkpoints are SiglipModel classes: hf_siglip
converts those.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from bigvl.convert import common, hf_siglip
from bigvl.convert.common import Rule

MODEL_TYPE = "siglip2"
NAME = "HF Siglip2Model"
SOURCE = f"the {NAME} checkpoint"
IGNORE = hf_siglip.IGNORE
HINT = hf_siglip.HINT
PATCH_KEY = "vision_model.embeddings.patch_embedding"


def model_config(hf, shapes: Mapping[str, tuple] | None = None) -> tuple[dict, dict]:
  """(bigvl model config, meta) of a `transformers.Siglip2Config`. meta's image_size is the
  position grid's native size (grid * patch), at which no resize happens."""
  v = hf.vision_config
  grid = math.isqrt(v.num_patches)
  if grid * grid != v.num_patches:
    raise common.ConversionError(f"Siglip2 vision_config.num_patches={v.num_patches} is not a "
                                 "square grid; bigvl's NaFlex position table is square.")
  # The text tower and the MAP head are SiglipModel's: read them with its config reader.
  shim = _SiglipView(hf, grid * v.patch_size)
  cfg, meta = hf_siglip.model_config(shim, shapes)
  cfg["image"]["posemb_grid"] = grid
  return cfg, meta


class _SiglipView:
  """A Siglip2Config seen as the SiglipConfig fields hf_siglip reads (vision image_size)."""

  def __init__(self, hf, image_size: int):
    self.text_config = hf.text_config
    self.vision_config = _Attrs(hf.vision_config, image_size=image_size)


class _Attrs:
  def __init__(self, base, **extra):
    self._base, self._extra = base, extra

  def __getattr__(self, name):
    return self._extra[name] if name in self._extra else getattr(self._base, name)


normalize = hf_siglip.normalize
denormalize = hf_siglip.denormalize


def rules(cfg: Mapping[str, Any]) -> list[Rule]:
  """SiglipModel's rules, the patch embedding a Linear on flattened patches."""
  out = []
  for r in hf_siglip.rules(cfg):
    if r.key == f"{PATCH_KEY}.weight":
      r = Rule(r.path, r.key, "patch_linear")
    out.append(r)
  return out


def hf_config(cfg: Mapping[str, Any], meta: Mapping[str, Any]):
  """The `transformers.Siglip2Config` of a bigvl model config (checked by the caller)."""
  import transformers
  c = common.canonical_config(cfg)
  img = c["image"]
  if img is None or not img.get("posemb_grid"):
    raise common.ConversionError("A HF Siglip2Model needs an image tower with a learned "
                                 "position grid: set config.model.image.posemb_grid (e.g. 16).")
  siglip = hf_siglip.hf_config(cfg, dict(meta, image_size=img["posemb_grid"] * img["patch_size"]))
  vision = siglip.vision_config.to_dict()
  vision = {k: vision[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "num_channels", "patch_size",
                                   "hidden_act", "layer_norm_eps")}
  vision["num_patches"] = img["posemb_grid"] ** 2
  return transformers.Siglip2Config(text_config=siglip.text_config.to_dict(),
                                    vision_config=vision, architectures=["Siglip2Model"])
