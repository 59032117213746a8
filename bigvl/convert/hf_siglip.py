"""HF transformers `SiglipModel` <-> bigvl `two_towers` (big_vision's SigLIP layout).

Facts of HF SigLIP that decide the bigvl options:
  vision: patch conv with bias; position embedding without a class token; post_layernorm on
    all tokens; pooled by SiglipMultiheadAttentionPoolingHead: a probe attends over the tokens
    through torch nn.MultiheadAttention (q/k/v packed in in_proj_weight), then
    x + MLP(LN(x)): bigvl's MAPHead. No projection: the pooled output is the embedding.
  text: no causal mask (and no padding mask: SigLIP pads to max_len and pools the last
    position); final_layer_norm on all tokens; `head`, a biased Linear, is the projection.
  logit_scale and logit_bias have shape (1,) like bigvl's `t` and `b`.
"""

from __future__ import annotations

from typing import Any, Mapping

from bigvl.convert import common
from bigvl.convert.common import Rule, dense, encoder, norm
from bigvl.convert.hf_clip import BLOCK, square
from bigvl.models.text import TextTransformer
from bigvl.models.vit import ViT

MODEL_TYPE = "siglip"
NAME = "HF SiglipModel"
SOURCE = f"the {NAME} checkpoint"
IGNORE = (r"position_ids$",)
HINT = ("Convert without a model config to take it from config.json, or make the config match "
        "the checkpoint.")
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def model_config(hf, shapes: Mapping[str, tuple] | None = None) -> tuple[dict, dict]:
  """(bigvl model config, meta) of a `transformers.SiglipConfig`."""
  v, t = hf.vision_config, hf.text_config
  where = "SigLIP config"
  if not getattr(v, "vision_use_head", True):
    raise common.ConversionError("vision_config.vision_use_head=False: the SiglipModel then has "
                                 "no image embedding to convert.")
  image = dict(width=v.hidden_size, depth=v.num_hidden_layers, mlp_dim=v.intermediate_size,
               num_heads=v.num_attention_heads, patch_size=square(v.patch_size, "patch_size"),
               pool="map", act=common.act_from_hf(v.hidden_act, where),
               ln_eps=float(v.layer_norm_eps))
  projection = getattr(t, "projection_size", None) or t.hidden_size
  text = dict(vocab_size=t.vocab_size, width=t.hidden_size, depth=t.num_hidden_layers,
              mlp_dim=t.intermediate_size, num_heads=t.num_attention_heads,
              max_len=t.max_position_embeddings, pool="last", num_classes=projection,
              act=common.act_from_hf(t.hidden_act, where), ln_eps=float(t.layer_norm_eps))
  cfg = dict(name="two_towers", image=image, text=text, embed_dim=None, temperature_init=10.0,
             bias_init=-10.0)
  meta = dict(image_size=square(v.image_size, "image_size"), channels=v.num_channels,
              text_len=t.max_position_embeddings, image_mean=list(IMAGE_MEAN),
              image_std=list(IMAGE_STD))
  return cfg, meta


def normalize(state: Mapping[str, Any]) -> dict:
  return common.split_packed_qkv(state)


def denormalize(state: Mapping[str, Any]) -> dict:
  return common.pack_qkv(state)


def rules(cfg: Mapping[str, Any]) -> list[Rule]:
  """Every bigvl parameter a SiglipModel can hold, with its HF name."""
  v, t = "vision_model", "text_model"
  head = f"{v}.head"
  r = [Rule("img/embedding/kernel", f"{v}.embeddings.patch_embedding.weight", "conv"),
       Rule("img/embedding/bias", f"{v}.embeddings.patch_embedding.bias", "same"),
       Rule("img/pos_embedding", f"{v}.embeddings.position_embedding.weight", "drop1")]
  r += encoder("img/encoder", lambda i: f"{v}.encoder.layers.{i}",
               ViT(**dict(cfg["image"])).dims()["depth"], BLOCK)
  r += norm("img/encoder/encoder_norm", f"{v}.post_layernorm")
  r += [Rule("img/map_head/probe", f"{head}.probe", "same")]
  r += common.attention("img/map_head/attn", f"{head}.attention", "in_proj[q]", "in_proj[k]",
                        "in_proj[v]", "out_proj")
  r += norm("img/map_head/ln", f"{head}.layernorm")
  r += dense("img/map_head/mlp/fc1", f"{head}.mlp.fc1") + dense("img/map_head/mlp/fc2",
                                                                f"{head}.mlp.fc2")
  r += [Rule("txt/token_embedding/embedding", f"{t}.embeddings.token_embedding.weight", "same"),
        Rule("txt/pos_embedding", f"{t}.embeddings.position_embedding.weight", "drop1")]
  r += encoder("txt/encoder", lambda i: f"{t}.encoder.layers.{i}",
               TextTransformer(**dict(cfg["text"])).dims()["depth"], BLOCK)
  r += norm("txt/encoder/encoder_norm", f"{t}.final_layer_norm")
  r += dense("txt/head", f"{t}.head")
  r += [Rule("t", "logit_scale", "same"), Rule("b", "logit_bias", "same")]
  return r


def hf_config(cfg: Mapping[str, Any], meta: Mapping[str, Any]):
  """The `transformers.SiglipConfig` of a bigvl model config (checked by the caller)."""
  import transformers
  c = common.canonical_config(cfg)
  img, txt = c["image"], c["text"]
  if img is None or txt is None:
    raise common.ConversionError("A HF SiglipModel needs both towers.")
  where = "export to HF SigLIP"
  vision = common.hf_vision_config(img, meta, where, vision_use_head=True)
  text = dict(vocab_size=txt["vocab_size"], hidden_size=txt["width"],
              intermediate_size=txt["mlp_dim"], num_hidden_layers=txt["depth"],
              num_attention_heads=txt["num_heads"], max_position_embeddings=txt["max_len"],
              hidden_act=common.act_to_hf(txt["act"], where), layer_norm_eps=txt["ln_eps"],
              projection_size=txt.get("num_classes"))
  return transformers.SiglipConfig(text_config=text, vision_config=vision,
                                   architectures=["SiglipModel"])
