"""HF transformers `GPT2LMHeadModel` / `GPT2Model` -> bigvl `lm` (CausalLM), import only.

Facts of HF GPT-2 that decide the bigvl options:
  pre-LN blocks (ln_1, attn, ln_2, mlp) with biases everywhere and a final `ln_f`, eps
  `layer_norm_epsilon` (1e-5); learned absolute positions `wpe` (n_positions rows);
  activation `gelu_new`, the tanh approximation (bigvl `gelu_tanh`); MLP width `n_inner`,
  4 * n_embd when None; attention scaled by 1/sqrt(head_dim); the LM head is the token
  embedding transposed (tie_embeddings) and has no bias.
  Linear layers are `Conv1D`s whose weights are (in, out), not torch Linear's (out, in);
  `c_attn` packs q, k, v along `out`: `normalize` splits it into the virtual keys
  `h.N.attn.c_attn[q].weight`, `[k]`, `[v]` (and the biases likewise).
  GPT2LMHeadModel's keys start with `transformer.`; GPT2Model's and the original OpenAI
  conversions' do not. Old checkpoints also hold the causal-mask buffers `h.N.attn.bias`
  and `h.N.attn.masked_bias`, which carry no parameter.
Not convertible (refused with the option's name): scale_attn_weights=False,
scale_attn_by_inverse_layer_idx=True, add_cross_attention=True.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from bigvl.convert import common
from bigvl.convert.common import Layout, Rule, norm

MODEL_TYPE = "gpt2"
NAME = "HF GPT-2"
SOURCE = f"the {NAME} checkpoint"
IGNORE = (r"(^|\.)attn\.(masked_)?bias$",)   # Causal-mask buffers of older checkpoints.
HINT = ("Convert without a model config to take it from config.json, or make the config match "
        "the checkpoint.")


def _conv1d_heads_in_shape(shape):
  # Kernel (width, heads, head_dim) <- Conv1D (width, heads*head_dim); bias (heads, head_dim).
  return (shape[0], shape[1] * shape[2]) if len(shape) == 3 else (shape[0] * shape[1],)


def _conv1d_heads_in_to_source(x):
  return x.reshape(x.shape[0], -1) if x.ndim == 3 else x.reshape(-1)


# Conv1D weights are already (in, out) like a flax Dense kernel ("same"); only the head
# splits differ from torch Linear's layouts. Registered into common.LAYOUTS on import.
LAYOUTS = {
    # q/k/v projections: Conv1D (width, heads*head_dim) <-> (width, heads, head_dim).
    "conv1d_heads_in": Layout(lambda x, shape: x.reshape(shape), _conv1d_heads_in_to_source,
                              _conv1d_heads_in_shape),
    # Output projection: Conv1D (heads*head_dim, width) <-> (heads, head_dim, width).
    "conv1d_heads_out": Layout(lambda x, shape: x.reshape(shape),
                               lambda x: x.reshape(-1, x.shape[-1]),
                               lambda shape: (shape[0] * shape[1], shape[2])),
}
for _name, _layout in LAYOUTS.items():
  common.LAYOUTS.setdefault(_name, _layout)

_PREFIX = "transformer."
_C_ATTN = re.compile(r"^(.*\.attn\.c_attn)\.(weight|bias)$")
_C_ATTN_SPLIT = re.compile(r"^(.*\.attn\.c_attn)\[([qkv])\]\.(weight|bias)$")


def normalize(state: Mapping[str, Any]) -> dict:
  """Source state dict -> the key space of `rules`.

  Drops the `transformer.` prefix, splits each `c_attn` into its q/k/v thirds, and drops
  `lm_head.weight` when it is the token embedding (tied; `state_dict()` holds both, files
  written by `save_pretrained` only `wte`).
  """
  out = {}
  for key, value in state.items():
    key = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
    m = _C_ATTN.match(key)
    if m is None:
      out[key] = value
      continue
    value = np.asarray(value)
    if value.shape[-1] % 3:
      raise common.ConversionError(f"{key} has shape {value.shape}: its last dimension should "
                                   "be 3x the width (q, k and v packed).")
    for part, third in zip("qkv", np.split(value, 3, axis=-1)):
      out[f"{m.group(1)}[{part}].{m.group(2)}"] = third
  head, wte = out.get("lm_head.weight"), out.get("wte.weight")
  if head is not None and wte is not None and np.array_equal(np.asarray(head), np.asarray(wte)):
    del out["lm_head.weight"]
  return out


def denormalize(state: Mapping[str, Any]) -> dict:
  """The inverse of `normalize`: a GPT2LMHeadModel state dict (tied head left out)."""
  out, parts = {}, {}
  for key, value in state.items():
    m = _C_ATTN_SPLIT.match(key)
    if m is None:
      out[key if key.startswith("lm_head.") else _PREFIX + key] = value
    else:
      parts.setdefault(f"{_PREFIX}{m.group(1)}.{m.group(3)}", {})[m.group(2)] = value
  for key, qkv in parts.items():
    out[key] = np.concatenate([qkv[p] for p in "qkv"], axis=-1)
  return out


def model_config(hf, shapes: Mapping[str, tuple] | None = None) -> tuple[dict, dict]:
  """(bigvl model config, meta) of a `transformers.GPT2Config` and the (normalised) shapes.

  Whether the LM head is tied is read from the weights: a distinct `lm_head.weight` makes an
  untied, bias-free `head`.
  """
  where = "GPT-2 config"
  for option, bad in (("scale_attn_weights", False), ("scale_attn_by_inverse_layer_idx", True),
                      ("add_cross_attention", True)):
    if bool(getattr(hf, option, not bad)) == bad:
      raise common.ConversionError(f"{where} has {option}={bad}; bigvl's CausalLM cannot "
                                   "express it. Such checkpoints are not supported.")
  tied = "lm_head.weight" not in (shapes or {})
  cfg = dict(name="lm", vocab_size=hf.vocab_size, width=hf.n_embd, depth=hf.n_layer,
             mlp_dim=hf.n_inner or 4 * hf.n_embd, num_heads=hf.n_head, max_len=hf.n_positions,
             act=common.act_from_hf(hf.activation_function, where),
             ln_eps=float(hf.layer_norm_epsilon), tie_embeddings=tied)
  if not tied:
    cfg["head_bias"] = False
  meta = dict(text_len=hf.n_positions, bos_id=hf.bos_token_id, eos_id=hf.eos_token_id)
  return cfg, meta


def rules(cfg: Mapping[str, Any]) -> list[Rule]:
  """Every bigvl parameter a GPT-2 checkpoint can hold, with its (normalised) HF name."""
  from bigvl.models.lm import CausalLM
  depth = CausalLM(**{k: v for k, v in cfg.items() if k != "name"}).dims()["depth"]
  r = [Rule("token_embedding/embedding", "wte.weight", "same"),
       Rule("position/embedding", "wpe.weight", "drop1")]
  for i in range(depth):
    dst, src = f"block{i}", f"h.{i}"
    r += norm(f"{dst}/ln1", f"{src}.ln_1")
    for part, name in (("q", "query"), ("k", "key"), ("v", "value")):
      r += [Rule(f"{dst}/attn/{name}/kernel", f"{src}.attn.c_attn[{part}].weight",
                 "conv1d_heads_in"),
            Rule(f"{dst}/attn/{name}/bias", f"{src}.attn.c_attn[{part}].bias", "conv1d_heads_in")]
    r += [Rule(f"{dst}/attn/out/kernel", f"{src}.attn.c_proj.weight", "conv1d_heads_out"),
          Rule(f"{dst}/attn/out/bias", f"{src}.attn.c_proj.bias", "same")]
    r += norm(f"{dst}/ln2", f"{src}.ln_2")
    for fc, name in (("fc1", "c_fc"), ("fc2", "c_proj")):
      r += [Rule(f"{dst}/mlp/{fc}/kernel", f"{src}.mlp.{name}.weight", "same"),
            Rule(f"{dst}/mlp/{fc}/bias", f"{src}.mlp.{name}.bias", "same")]
  r += norm("final_norm", "ln_f")
  r += [Rule("head/kernel", "lm_head.weight", "linear")]  # Untied heads only.
  return r
