"""HF transformers `ViTModel` / `ViTForImageClassification` -> bigvl `vit` (import only).

Facts of HF ViT that decide the bigvl options:
  class token whose position is the first row of the position embedding (cls_posemb); patch
  conv with bias; exact GELU; layer_norm_eps 1e-12 by default; `layernorm` on all tokens;
  ViTModel's pooler is Dense + tanh on the class token: the ViT paper's pre-logits
  (rep_size); ViTForImageClassification has no pooler, a `classifier` Linear instead (head).
Checkpoints written before transformers 5 name the layers `encoder.layer.N.attention.
attention.query`, ...; `normalize` renames them to the current `layers.N.attention.q_proj`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from bigvl.convert import common
from bigvl.convert.common import BlockNames, Rule, dense, encoder, norm
from bigvl.convert.hf_clip import square
from bigvl.models.vit import ViT

MODEL_TYPE = "vit"
NAME = "HF ViT"
SOURCE = f"the {NAME} checkpoint"
IGNORE = (r"^embeddings\.mask_token$",)   # Only masked-image-modelling uses it.
HINT = ("Convert without a model config to take it from config.json, or make the config match "
        "the checkpoint.")
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)

BLOCK = BlockNames(ln1="layernorm_before", q="attention.q_proj", k="attention.k_proj",
                   v="attention.v_proj", out="attention.o_proj", ln2="layernorm_after",
                   fc1="mlp.fc1", fc2="mlp.fc2")

# Pre-transformers-5 names -> current ones, applied in order.
_RENAMES = (
    (r"^vit\.", ""),  # ViTForImageClassification's base model prefix.
    (r"encoder\.layer\.(\d+)\.", r"layers.\1."),
    (r"attention\.attention\.query\.", "attention.q_proj."),
    (r"attention\.attention\.key\.", "attention.k_proj."),
    (r"attention\.attention\.value\.", "attention.v_proj."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"(layers\.\d+)\.intermediate\.dense\.", r"\1.mlp.fc1."),
    (r"(layers\.\d+)\.output\.dense\.", r"\1.mlp.fc2."),
)


def normalize(state: Mapping[str, Any]) -> dict:
  out = {}
  for key, value in state.items():
    for pattern, repl in _RENAMES:
      key = re.sub(pattern, repl, key)
    out[key] = value
  return out


def model_config(hf, shapes: Mapping[str, tuple]) -> tuple[dict, dict]:
  """(bigvl model config, meta) of a `transformers.ViTConfig` and the (normalised) weight shapes.

  Whether there is a pooler or a classifier is a property of the weights, not of config.json.
  """
  if not getattr(hf, "qkv_bias", True):
    raise common.ConversionError("ViT config has qkv_bias=False; bigvl attention always has "
                                 "q/k/v biases. Such checkpoints are not supported.")
  cfg = dict(name="vit", width=hf.hidden_size, depth=hf.num_hidden_layers,
             mlp_dim=hf.intermediate_size, num_heads=hf.num_attention_heads,
             patch_size=square(hf.patch_size, "patch_size"), pool="cls", cls_posemb=True,
             act=common.act_from_hf(hf.hidden_act, "ViT config"), ln_eps=float(hf.layer_norm_eps))
  if "pooler.dense.weight" in shapes:
    if getattr(hf, "pooler_act", "tanh") != "tanh":
      raise common.ConversionError(f"ViT pooler_act={hf.pooler_act!r}; bigvl's pre-logits use "
                                   "tanh, as the ViT paper and HF's default.")
    cfg["rep_size"] = getattr(hf, "pooler_output_size", None) or hf.hidden_size
  if "classifier.weight" in shapes:
    cfg["num_classes"] = int(shapes["classifier.weight"][0])
  meta = dict(image_size=square(hf.image_size, "image_size"), channels=hf.num_channels,
              text_len=None, image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD))
  return cfg, meta


def rules(cfg: Mapping[str, Any]) -> list[Rule]:
  """Every bigvl parameter a HF ViT can hold, with its HF name."""
  vit_cfg = {k: v for k, v in cfg.items() if k != "name"}
  r = [Rule("embedding/kernel", "embeddings.patch_embeddings.projection.weight", "conv"),
       Rule("embedding/bias", "embeddings.patch_embeddings.projection.bias", "same"),
       Rule("cls", "embeddings.cls_token", "same"),
       Rule("pos_embedding", "embeddings.position_embeddings", "same")]
  r += encoder("encoder", lambda i: f"layers.{i}", ViT(**vit_cfg).dims()["depth"], BLOCK)
  r += norm("encoder/encoder_norm", "layernorm")
  r += dense("pre_logits", "pooler.dense") + dense("head", "classifier")
  return r
