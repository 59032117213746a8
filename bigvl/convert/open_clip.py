"""open_clip `CLIP` / `CustomTextCLIP` state dicts (built-in ViT + text transformer) -> bigvl.

Facts of open_clip that decide the bigvl options:
  model config: JSON `{"embed_dim", "quick_gelu", "vision_cfg", "text_cfg", ...}` (the files in
    open_clip/model_configs; the "-quickgelu" names set quick_gelu). Activation nn.GELU
    (exact) unless quick_gelu; LayerNorm eps 1e-5.
  vision: conv1 without bias; class_embedding whose position is row 0 of positional_embedding;
    ln_pre; ln_post on all tokens, or on the pooled token with final_ln_after_pool; `proj`
    is a (width, embed_dim) matrix applied as x @ proj, i.e. already a flax Dense kernel.
  blocks: nn.MultiheadAttention with q/k/v packed in in_proj_weight (3*width, width).
  text: causal unless no_causal_mask; ln_final on all tokens; pooled at argmax(token id) by
    default (CLIP's EOS is its highest id); text_projection a (width, embed_dim) matrix, or a
    Linear when proj_bias. CustomTextCLIP nests the text tower under `text.`.
  logit_scale (and logit_bias when the config has init_logit_bias) are scalars.
Towers open_clip builds from timm or HF models (timm_model_name, hf_model_name) and the other
options listed in `_UNSUPPORTED` are refused with a message.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from typing import Any, Mapping

from bigvl.convert import common
from bigvl.convert.common import BlockNames, Rule, dense, encoder, norm
from bigvl.convert.hf_clip import IMAGE_MEAN, IMAGE_STD, square
from bigvl.models.text import TextTransformer
from bigvl.models.vit import ViT

NAME = "open_clip"
SOURCE = f"the {NAME} checkpoint"
IGNORE = (r"(^|\.)attn_mask$",)   # Old checkpoints saved the causal mask buffer.
HINT = ("Check that the model name / config is the one the checkpoint was trained with "
        "(e.g. 'ViT-B-32' vs 'ViT-B-16').")

BLOCK = BlockNames(ln1="ln_1", q="attn.in_proj[q]", k="attn.in_proj[k]", v="attn.in_proj[v]",
                   out="attn.out_proj", ln2="ln_2", fc1="mlp.c_fc", fc2="mlp.c_proj")

# open_clip's CLIPVisionCfg / CLIPTextCfg defaults that the conversion reads.
_VISION_DEFAULTS = dict(layers=12, width=768, head_width=64, mlp_ratio=4.0, patch_size=16,
                        image_size=224, no_ln_pre=False, final_ln_after_pool=False,
                        pool_type="tok", pos_embed_type="learnable")
_TEXT_DEFAULTS = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12,
                      mlp_ratio=4.0, pad_id=0, eos_id=2, no_causal_mask=False,
                      pool_type="argmax", proj_bias=False, proj_type="linear")
# (section, option, the only value bigvl reproduces).
_UNSUPPORTED = (
    ("vision_cfg", "timm_model_name", None), ("vision_cfg", "ls_init_value", None),
    ("vision_cfg", "attentional_pool", False), ("vision_cfg", "pool_type", "tok"),
    ("vision_cfg", "pos_embed_type", "learnable"), ("vision_cfg", "block_type", None),
    ("vision_cfg", "qk_norm", False), ("vision_cfg", "scaled_cosine_attn", False),
    ("vision_cfg", "scale_heads", False), ("vision_cfg", "scale_attn_inner", False),
    ("vision_cfg", "scale_attn", False), ("vision_cfg", "scale_fc", False),
    ("vision_cfg", "patch_dropout", 0.0),
    ("text_cfg", "hf_model_name", None), ("text_cfg", "ls_init_value", None),
    ("text_cfg", "embed_cls", False), ("text_cfg", "proj_type", "linear"),
    ("text_cfg", "block_type", None), ("text_cfg", "qk_norm", False),
    ("text_cfg", "scaled_cosine_attn", False), ("text_cfg", "scale_heads", False),
    ("text_cfg", "scale_attn_inner", False), ("text_cfg", "scale_attn", False),
    ("text_cfg", "scale_fc", False),
)
_POOLS = {"argmax": "argmax", "eos": "eos", "last": "last", "first": "first"}


def find_model_config(name: str) -> dict:
  """open_clip's JSON config of model `name` (e.g. "ViT-B-32"), read without importing open_clip."""
  spec = importlib.util.find_spec("open_clip")
  if spec is None or not spec.submodule_search_locations:
    raise common.ConversionError(f"open_clip is not installed, so model {name!r} cannot be looked "
                                 "up; pass the model's JSON config file instead.")
  config_dir = os.path.join(list(spec.submodule_search_locations)[0], "model_configs")
  path = os.path.join(config_dir, f"{name}.json")
  if not os.path.exists(path):
    known = sorted(f[:-5] for f in os.listdir(config_dir) if f.endswith(".json"))
    raise common.ConversionError(f"open_clip has no model {name!r}; known: {', '.join(known)}.")
  with open(path) as f:
    return json.load(f)


def _act(cfg: Mapping, section: Mapping) -> str:
  if cfg.get("quick_gelu"):
    return "quick_gelu"
  kwargs = section.get("act_kwargs") or {}
  if kwargs in ({}, {"approximate": "none"}):
    return "gelu"
  if kwargs == {"approximate": "tanh"}:
    return "gelu_tanh"
  raise common.ConversionError(f"open_clip act_kwargs={kwargs} has no bigvl activation.")


def _eps(section: Mapping) -> float:
  kwargs = dict(section.get("norm_kwargs") or {})
  eps = float(kwargs.pop("eps", 1e-5))
  if kwargs:
    raise common.ConversionError(f"open_clip norm_kwargs {sorted(kwargs)} are not supported.")
  return eps


def model_config(oc: Mapping[str, Any], shapes: Mapping[str, tuple] | None = None
                 ) -> tuple[dict, dict]:
  """(bigvl model config, meta) of an open_clip model config dict."""
  for section, option, ok in _UNSUPPORTED:
    value = (oc.get(section) or {}).get(option, ok)
    if value != ok:
      raise common.ConversionError(f"open_clip {section}.{option}={value!r} is not supported by "
                                   f"the converter (bigvl reproduces only {ok!r}).")
  v = {**_VISION_DEFAULTS, **oc["vision_cfg"]}
  t = {**_TEXT_DEFAULTS, **oc["text_cfg"]}
  if isinstance(v["layers"], (list, tuple)):
    raise common.ConversionError("open_clip ResNet image towers (layers is a list) are not "
                                 "supported; only ViTs.")
  if t["pool_type"] not in _POOLS:
    raise common.ConversionError(f"open_clip text pool_type={t['pool_type']!r} is not supported.")
  image = dict(width=v["width"], depth=v["layers"], mlp_dim=int(v["width"] * v["mlp_ratio"]),
               num_heads=v["width"] // v["head_width"], patch_size=square(v["patch_size"],
                                                                         "patch_size"),
               pool="cls", cls_posemb=True, pre_norm=not v["no_ln_pre"],
               norm_pooled=bool(v["final_ln_after_pool"]), patch_bias=False, act=_act(oc, v),
               ln_eps=_eps(v))
  text = dict(vocab_size=t["vocab_size"], width=t["width"], depth=t["layers"],
              mlp_dim=int(t["width"] * t["mlp_ratio"]), num_heads=t["heads"],
              max_len=t["context_length"], causal=not t["no_causal_mask"],
              pool=_POOLS[t["pool_type"]], act=_act(oc, t), ln_eps=_eps(t))
  if text["pool"] == "eos":
    text["eos_id"] = t["eos_id"]
  bias = oc.get("init_logit_bias")
  cfg = dict(name="two_towers", image=image, text=text, embed_dim=oc["embed_dim"],
             image_proj_bias=False, text_proj_bias=bool(t["proj_bias"]),
             temperature_init=float(math.exp(oc.get("init_logit_scale", math.log(1 / 0.07)))),
             bias_init=None if bias is None else float(bias))
  pp = oc.get("preprocess_cfg") or {}
  meta = dict(image_size=square(v["image_size"], "image_size"), channels=3,
              text_len=t["context_length"], image_mean=list(pp.get("mean", IMAGE_MEAN)),
              image_std=list(pp.get("std", IMAGE_STD)))
  return cfg, meta


def normalize(state: Mapping[str, Any]) -> dict:
  """CustomTextCLIP's `text.` prefix dropped (CLIP keeps the text tower at the top level)."""
  out = {(k[len("text."):] if k.startswith("text.") else k): v for k, v in state.items()}
  return common.split_packed_qkv(out)


def rules(cfg: Mapping[str, Any]) -> list[Rule]:
  """Every bigvl parameter an open_clip CLIP can hold, with its state-dict name."""
  r = [Rule("img/embedding/kernel", "visual.conv1.weight", "conv"),
       Rule("img/cls", "visual.class_embedding", "drop2"),
       Rule("img/pos_embedding", "visual.positional_embedding", "drop1")]
  r += norm("img/pre_norm", "visual.ln_pre")
  r += encoder("img/encoder", lambda i: f"visual.transformer.resblocks.{i}",
               ViT(**dict(cfg["image"])).dims()["depth"], BLOCK)
  r += norm("img/post_norm", "visual.ln_post") + norm("img/encoder/encoder_norm", "visual.ln_post")
  r += [Rule("img_proj/kernel", "visual.proj", "same"),
        Rule("txt/token_embedding/embedding", "token_embedding.weight", "same"),
        Rule("txt/pos_embedding", "positional_embedding", "drop1")]
  r += encoder("txt/encoder", lambda i: f"transformer.resblocks.{i}",
               TextTransformer(**dict(cfg["text"])).dims()["depth"], BLOCK)
  r += norm("txt/encoder/encoder_norm", "ln_final")
  if cfg.get("text_proj_bias", True):
    r += dense("txt_proj", "text_projection")
  else:
    r += [Rule("txt_proj/kernel", "text_projection", "same")]
  r += [Rule("t", "logit_scale", "drop1"), Rule("b", "logit_bias", "drop1")]
  return r
