"""HF transformers `CLIPModel` <-> bigvl `two_towers`.

Facts of HF CLIP that decide the bigvl options:
  vision: patch conv without bias; class token whose position is the first row of the position
    embedding (cls_posemb); pre_layrnorm before the blocks (pre_norm); post_layernorm on the
    pooled class token only (norm_pooled); visual_projection without bias.
  text: causal mask; final_layer_norm on all tokens; pooled at the first `eos_token_id`, or at
    the highest token id when the config says eos_token_id == 2 (configs older than
    transformers PR #24773 keep that value); text_projection without bias.
  logit_scale is log(temperature) like bigvl's `t`, a scalar where bigvl has shape (1,).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from bigvl.convert import common
from bigvl.convert.common import BlockNames, Rule, encoder, norm
from bigvl.models.text import TextTransformer
from bigvl.models.vit import ViT

MODEL_TYPE = "clip"
NAME = "HF CLIPModel"
SOURCE = f"the {NAME} checkpoint"
IGNORE = (r"position_ids$",)                         # Buffers some older checkpoints saved.
HINT = ("Convert without a model config to take it from config.json, or make the config match "
        "the checkpoint.")
# OpenAI's normalisation; used when the directory has no preprocessor_config.json.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# SigLIP's encoder layers are CLIP's (hf_siglip imports this).
BLOCK = BlockNames(ln1="layer_norm1", q="self_attn.q_proj", k="self_attn.k_proj",
                   v="self_attn.v_proj", out="self_attn.out_proj", ln2="layer_norm2",
                   fc1="mlp.fc1", fc2="mlp.fc2")


def square(value, what: str) -> int:
  """An int from an int or an (h, w) pair with h == w (bigvl models take square inputs here)."""
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise common.ConversionError(f"{what} is {tuple(value)}; conversion handles square ones.")
    value = value[0]
  return int(value)


def eos_id(text_config) -> int:
  eos = text_config.eos_token_id
  if isinstance(eos, (list, tuple)):
    if len(eos) != 1:
      raise common.ConversionError(f"text_config.eos_token_id={eos}: CLIP pools at one EOS id.")
    eos = eos[0]
  return int(eos)


def model_config(hf, shapes: Mapping[str, tuple] | None = None) -> tuple[dict, dict]:
  """(bigvl model config, meta) of a `transformers.CLIPConfig`."""
  v, t = hf.vision_config, hf.text_config
  where = "CLIP config"
  image = dict(width=v.hidden_size, depth=v.num_hidden_layers, mlp_dim=v.intermediate_size,
               num_heads=v.num_attention_heads, patch_size=square(v.patch_size, "patch_size"),
               pool="cls", cls_posemb=True, pre_norm=True, norm_pooled=True, patch_bias=False,
               act=common.act_from_hf(v.hidden_act, where), ln_eps=float(v.layer_norm_eps))
  eos = eos_id(t)
  text = dict(vocab_size=t.vocab_size, width=t.hidden_size, depth=t.num_hidden_layers,
              mlp_dim=t.intermediate_size, num_heads=t.num_attention_heads,
              max_len=t.max_position_embeddings, causal=True,
              pool="argmax" if eos == 2 else "eos", act=common.act_from_hf(t.hidden_act, where),
              ln_eps=float(t.layer_norm_eps))
  if eos != 2:
    text["eos_id"] = eos
  cfg = dict(name="two_towers", image=image, text=text, embed_dim=hf.projection_dim,
             image_proj_bias=False, text_proj_bias=False,
             temperature_init=float(math.exp(hf.logit_scale_init_value)), bias_init=None)
  meta = dict(image_size=square(v.image_size, "image_size"), channels=v.num_channels,
              text_len=t.max_position_embeddings, image_mean=list(IMAGE_MEAN),
              image_std=list(IMAGE_STD))
  return cfg, meta


def normalize(state: Mapping[str, Any]) -> dict:
  """Source state dict -> the key space of `rules` (HF CLIP keys are used as they are)."""
  return dict(state)


def denormalize(state: Mapping[str, Any]) -> dict:
  return dict(state)


def _depth(cls, cfg) -> int:
  return cls(**dict(cfg)).dims()["depth"]


def rules(cfg: Mapping[str, Any]) -> list[Rule]:
  """Every bigvl parameter a CLIPModel can hold, with its HF name."""
  v, t = "vision_model", "text_model"
  r = [Rule("img/embedding/kernel", f"{v}.embeddings.patch_embedding.weight", "conv"),
       Rule("img/cls", f"{v}.embeddings.class_embedding", "drop2"),
       Rule("img/pos_embedding", f"{v}.embeddings.position_embedding.weight", "drop1")]
  r += norm("img/pre_norm", f"{v}.pre_layrnorm")
  r += encoder("img/encoder", lambda i: f"{v}.encoder.layers.{i}", _depth(ViT, cfg["image"]), BLOCK)
  # Which of the two the model has depends on `norm_pooled`; same function for pool="cls".
  r += norm("img/post_norm", f"{v}.post_layernorm")
  r += norm("img/encoder/encoder_norm", f"{v}.post_layernorm")
  r += [Rule("img_proj/kernel", "visual_projection.weight", "linear"),
        Rule("txt/token_embedding/embedding", f"{t}.embeddings.token_embedding.weight", "same"),
        Rule("txt/pos_embedding", f"{t}.embeddings.position_embedding.weight", "drop1")]
  r += encoder("txt/encoder", lambda i: f"{t}.encoder.layers.{i}",
               _depth(TextTransformer, cfg["text"]), BLOCK)
  r += norm("txt/encoder/encoder_norm", f"{t}.final_layer_norm")
  r += [Rule("txt_proj/kernel", "text_projection.weight", "linear"),
        Rule("t", "logit_scale", "drop1")]
  return r


def hf_config(cfg: Mapping[str, Any], meta: Mapping[str, Any]):
  """The `transformers.CLIPConfig` of a bigvl model config (checked by the caller)."""
  import transformers
  c = common.canonical_config(cfg)
  img, txt = c["image"], c["text"]
  if img is None or txt is None or not c["embed_dim"]:
    raise common.ConversionError("A HF CLIPModel needs both towers and embed_dim.")
  where = "export to HF CLIP"
  vision = common.hf_vision_config(img, meta, where, projection_dim=c["embed_dim"])
  text = dict(vocab_size=txt["vocab_size"], hidden_size=txt["width"],
              intermediate_size=txt["mlp_dim"], num_hidden_layers=txt["depth"],
              num_attention_heads=txt["num_heads"], max_position_embeddings=txt["max_len"],
              hidden_act=common.act_to_hf(txt["act"], where), layer_norm_eps=txt["ln_eps"],
              projection_dim=c["embed_dim"],
              # 2 is HF's marker for "pool at the highest id" (see the module docstring).
              eos_token_id=2 if txt["pool"] == "argmax" else txt.get("eos_id"))
  temperature = dict(cfg).get("temperature_init", 1 / 0.07)
  return transformers.CLIPConfig(text_config=text, vision_config=vision,
                                 projection_dim=c["embed_dim"],
                                 logit_scale_init_value=math.log(temperature),
                                 architectures=["CLIPModel"])
