"""Shared machinery of checkpoint conversion: tensor layouts, name rules and their checks.

A family module (hf_clip.py, ...) describes a checkpoint format as a list of `Rule`s, one per
bigvl parameter: its path in the bigvl param tree, the name of the tensor in the source state
dict, and the layout that turns one into the other. Every layout is a transpose and/or
reshape, so a conversion there and back is bit-exact.

Paths are "/"-joined (`img/encoder/block0/attn/query/kernel`); source keys are the
reference's state-dict names, with packed q/k/v tensors split into virtual keys
(`attn.in_proj[q].weight`, see `split_packed_qkv`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import numpy as np


class ConversionError(ValueError):
  """A checkpoint that does not fit the requested model; the message names the tensor and fix."""


# ----------------------------------------------------------------------------- layouts


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a source tensor maps to a bigvl parameter of shape `shape`, and back."""
  to_bigvl: Callable[[np.ndarray, tuple], np.ndarray]
  to_source: Callable[[np.ndarray], np.ndarray]
  source_shape: Callable[[tuple], tuple]   # The source shape that gives bigvl shape `shape`.


def _heads_in_shape(shape):
  # Kernel (width, heads, head_dim) <- torch (heads*head_dim, width); bias (heads, head_dim).
  return (shape[1] * shape[2], shape[0]) if len(shape) == 3 else (shape[0] * shape[1],)


def _heads_in_to_source(x):
  if x.ndim == 3:
    return x.reshape(x.shape[0], -1).T
  return x.reshape(-1)


def _drop(n: int) -> Layout:
  # bigvl keeps `n` leading singleton dims that the source does not have (e.g. (1, 1, w) vs (w,)).
  return Layout(to_bigvl=lambda x, shape: x.reshape(shape),
                to_source=lambda x: x.reshape(x.shape[n:]),
                source_shape=lambda shape: tuple(shape[n:]))


LAYOUTS: dict[str, Layout] = {
    "same": Layout(lambda x, shape: x, lambda x: x, tuple),
    # torch nn.Linear (out, in) <-> flax Dense (in, out).
    "linear": Layout(lambda x, shape: x.T, lambda x: x.T, lambda shape: tuple(shape[::-1])),
    # q/k/v projections: torch (heads*head_dim, width) <-> (width, heads, head_dim).
    "heads_in": Layout(lambda x, shape: (x.T if x.ndim == 2 else x).reshape(shape),
                       _heads_in_to_source, _heads_in_shape),
    # Output projection: torch (width, heads*head_dim) <-> (heads, head_dim, width).
    "heads_out": Layout(lambda x, shape: x.T.reshape(shape),
                        lambda x: x.reshape(-1, x.shape[-1]).T,
                        lambda shape: (shape[2], shape[0] * shape[1])),
    # Patch embedding: torch Conv2d (out, in, kh, kw) <-> flax Conv (kh, kw, in, out).
    "conv": Layout(lambda x, shape: x.transpose(2, 3, 1, 0), lambda x: x.transpose(3, 2, 0, 1),
                   lambda shape: (shape[3], shape[2], shape[0], shape[1])),
    # NaFlex patch embedding: torch Linear (out, kh*kw*in), flattened (row, col, channel) <->
    # flax Conv (kh, kw, in, out): the same weights, SigLIP 2's patches pre-cut.
    "patch_linear": Layout(lambda x, shape: x.T.reshape(shape),
                           lambda x: x.reshape(-1, x.shape[-1]).T,
                           lambda shape: (shape[3], shape[0] * shape[1] * shape[2])),
    "drop1": _drop(1),
    "drop2": _drop(2),
}


@dataclasses.dataclass(frozen=True)
class Rule:
  path: str     # bigvl parameter, "/"-joined.
  key: str      # Source state-dict key.
  layout: str   # A name in LAYOUTS.


# ----------------------------------------------------------------------------- rule builders


def dense(path: str, key: str, layout: str = "linear") -> list[Rule]:
  """A torch Linear `key` (weight, bias) <-> a flax Dense `path` (kernel, bias)."""
  return [Rule(f"{path}/kernel", f"{key}.weight", layout), Rule(f"{path}/bias", f"{key}.bias",
                                                                "same")]


def norm(path: str, key: str) -> list[Rule]:
  """A torch LayerNorm (weight, bias) <-> a flax LayerNorm (scale, bias)."""
  return [Rule(f"{path}/scale", f"{key}.weight", "same"), Rule(f"{path}/bias", f"{key}.bias",
                                                               "same")]


def attention(path: str, key: str, q: str, k: str, v: str, out: str) -> list[Rule]:
  """Separate q/k/v/out torch Linears under `key` <-> bigvl `Attention` at `path`."""
  rules = []
  for dst, src in (("query", q), ("key", k), ("value", v)):
    rules += [Rule(f"{path}/{dst}/kernel", f"{key}.{src}.weight", "heads_in"),
              Rule(f"{path}/{dst}/bias", f"{key}.{src}.bias", "heads_in")]
  return rules + [Rule(f"{path}/out/kernel", f"{key}.{out}.weight", "heads_out"),
                  Rule(f"{path}/out/bias", f"{key}.{out}.bias", "same")]


@dataclasses.dataclass(frozen=True)
class BlockNames:
  """Source names, relative to a block, of the parts of a pre-LN transformer block."""
  ln1: str
  q: str
  k: str
  v: str
  out: str
  ln2: str
  fc1: str
  fc2: str


def encoder(path: str, key_of_block: Callable[[int], str], depth: int,
            names: BlockNames) -> list[Rule]:
  """Rules of `depth` blocks of a bigvl `Encoder` at `path` (final norm excluded)."""
  rules = []
  for i in range(depth):
    dst, src = f"{path}/block{i}", key_of_block(i)
    rules += norm(f"{dst}/ln1", f"{src}.{names.ln1}")
    rules += attention(f"{dst}/attn", src, names.q, names.k, names.v, names.out)
    rules += norm(f"{dst}/ln2", f"{src}.{names.ln2}")
    rules += dense(f"{dst}/mlp/fc1", f"{src}.{names.fc1}")
    rules += dense(f"{dst}/mlp/fc2", f"{src}.{names.fc2}")
  return rules


# torch nn.MultiheadAttention packs q/k/v into one tensor; bigvl keeps them apart.
_PACKED = re.compile(r"^(.*)in_proj_(weight|bias)$")
_SPLIT = re.compile(r"^(.*)in_proj\[([qkv])\]\.(weight|bias)$")


def split_packed_qkv(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`X.in_proj_weight` (3w, w) -> `X.in_proj[q].weight`, `[k]`, `[v]` (w, w); same for bias."""
  out = {}
  for key, value in state.items():
    m = _PACKED.match(key)
    if m is None:
      out[key] = value
      continue
    if value.shape[0] % 3:
      raise ConversionError(f"{key} has shape {value.shape}: its first dimension should be 3x "
                            "the width (packed query, key, value).")
    for part, chunk in zip("qkv", np.split(value, 3, axis=0)):
      out[f"{m.group(1)}in_proj[{part}].{m.group(2)}"] = chunk
  return out


def pack_qkv(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Inverse of `split_packed_qkv`."""
  out, parts = {}, {}
  for key, value in state.items():
    m = _SPLIT.match(key)
    if m is None:
      out[key] = value
    else:
      parts.setdefault(f"{m.group(1)}in_proj_{m.group(3)}", {})[m.group(2)] = value
  for key, p in parts.items():
    out[key] = np.concatenate([p["q"], p["k"], p["v"]], axis=0)
  return out


def describe_key(key: str) -> str:
  """A source key as the user's checkpoint names it (virtual split keys name their packed tensor)."""
  m = _SPLIT.match(key)
  if m is None:
    return key
  part = {"q": "query", "k": "key", "v": "value"}[m.group(2)]
  return f"{m.group(1)}in_proj_{m.group(3)} ({part} third)"


# ----------------------------------------------------------------------------- applying rules


def flatten(tree: Mapping, prefix: str = "") -> dict:
  """Nested dict -> {"a/b/c": leaf}."""
  out = {}
  for k, v in tree.items():
    path = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, path + "/"))
    else:
      out[path] = v
  return out


def unflatten(flat: Mapping[str, object]) -> dict:
  """{"a/b/c": leaf} -> nested dict."""
  out: dict = {}
  for path, v in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def apply_rules(state: Mapping[str, np.ndarray], rules: Iterable[Rule],
                expected: Mapping[str, tuple], *, source: str, ignore: Iterable[str] = (),
                hint: str = "") -> dict[str, np.ndarray]:
  """Source state dict -> flat bigvl params with exactly the `expected` paths and shapes.

  Args:
    state: source key -> array (packed q/k/v already split).
    rules: the family's rules; those whose path the model lacks are skipped.
    expected: bigvl path -> shape, of the requested model (`abstract_params`).
    source: what the checkpoint is, for messages ("a HF CLIPModel checkpoint").
    ignore: regexes of source keys that carry no parameter (buffers such as position_ids).
    hint: appended to error messages: how to fix a config that does not match.
  Returns:
    bigvl path -> array, in the order of `rules`.
  Raises:
    ConversionError naming the first parameter that is missing or has the wrong shape, or
    the source tensors nothing uses.
  """
  rules = [r for r in rules if r.path in expected]
  covered = {r.path for r in rules}
  uncovered = [p for p in expected if p not in covered]
  if uncovered:
    raise ConversionError(f"bigvl parameter {uncovered[0]} (shape {tuple(expected[uncovered[0]])})"
                          f" has no counterpart in {source}: the requested model config has a "
                          f"part that format lacks. {hint}")
  out, used = {}, set()
  for rule in rules:
    shape = tuple(expected[rule.path])
    layout = LAYOUTS[rule.layout]
    want = layout.source_shape(shape)
    if rule.key not in state:
      raise ConversionError(f"{source} has no tensor {describe_key(rule.key)}, which bigvl "
                            f"parameter {rule.path} (shape {shape}) needs. {hint}")
    x = np.asarray(state[rule.key])
    if tuple(x.shape) != want:
      raise ConversionError(f"Shape mismatch at {describe_key(rule.key)} (bigvl {rule.path}): "
                            f"the checkpoint has {tuple(x.shape)}, the config expects {want}. "
                            f"{hint}")
    out[rule.path] = layout.to_bigvl(x, shape)
    used.add(rule.key)
  ignored = [re.compile(p) for p in ignore]
  extra = [k for k in state if k not in used and not any(p.search(k) for p in ignored)]
  if extra:
    shown = ", ".join(describe_key(k) for k in extra[:4])
    raise ConversionError(f"{source} has {len(extra)} tensor(s) the requested model does not use, "
                          f"first: {shown}. {hint}")
  return out


def invert_rules(params: Mapping[str, np.ndarray], rules: Iterable[Rule], *,
                 target: str) -> dict[str, np.ndarray]:
  """Flat bigvl params -> source state dict; every parameter must have a rule."""
  by_path = {r.path: r for r in rules}
  out = {}
  for path, x in params.items():
    if path not in by_path:
      raise ConversionError(f"bigvl parameter {path} has no counterpart in {target}; the model "
                            "config has a part that format lacks.")
    rule = by_path[path]
    out[rule.key] = np.asarray(LAYOUTS[rule.layout].to_source(np.asarray(x)), order="C")
  return out


# ----------------------------------------------------------------------------- configs

# HF `hidden_act` <-> bigvl `act`. gelu_new is the tanh approximation written out.
HF_ACT_TO_BIGVL = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                   "gelu_new": "gelu_tanh", "relu": "relu"}
BIGVL_ACT_TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh",
                   "relu": "relu"}


def act_from_hf(name: str, where: str) -> str:
  if name not in HF_ACT_TO_BIGVL:
    raise ConversionError(f"{where}: activation {name!r} has no bigvl equivalent; bigvl has "
                          f"{', '.join(sorted(HF_ACT_TO_BIGVL))}.")
  return HF_ACT_TO_BIGVL[name]


def act_to_hf(name: str, where: str) -> str:
  if name not in BIGVL_ACT_TO_HF:
    raise ConversionError(f"{where}: bigvl activation {name!r} has no HF equivalent.")
  return BIGVL_ACT_TO_HF[name]


# Options that change no parameter and no output of a trained model at inference.
_NOT_ARCHITECTURE = {"variant", "dropout", "attention_impl", "dtype", "head_zero_init",
                     "temperature_init"}


def hf_vision_config(img: Mapping, meta: Mapping, where: str, **extra) -> dict:
  """The HF `vision_config` kwargs shared by CLIP and SigLIP for a canonical bigvl image tower."""
  return dict(hidden_size=img["width"], intermediate_size=img["mlp_dim"],
              num_hidden_layers=img["depth"], num_attention_heads=img["num_heads"],
              patch_size=img["patch_size"], image_size=meta["image_size"],
              num_channels=meta.get("channels", 3), hidden_act=act_to_hf(img["act"], where),
              layer_norm_eps=img["ln_eps"], **extra)


def _tower(cls, cfg: Mapping) -> dict:
  module = cls(**dict(cfg))
  # Declaration order, so that the first difference reported is the most basic one.
  out = {f.name: getattr(module, f.name) for f in dataclasses.fields(cls)
         if f.init and f.name not in ("parent", "name")}
  out.update(module.dims())
  if out.get("pool") != "eos":
    out.pop("eos_id", None)
  if not (out.get("mask_pad") or out.get("pool") == "gap"):
    out.pop("pad_id", None)
  if not out.get("num_classes"):
    out.pop("head_bias", None)
  if out.get("pool") == "cls" and "norm_pooled" in out:
    out["norm_pooled"] = True  # LN(x)[:, 0] == LN(x[:, 0]): the same pooled output either way.
  return {k: v for k, v in out.items() if k not in _NOT_ARCHITECTURE}


def canonical_config(cfg: Mapping) -> dict:
  """A model config with every architectural option explicit (defaults filled, variant resolved).

  Two configs build the same function of the same parameters iff their canonical forms are equal.
  """
  from bigvl.models.text import TextTransformer
  from bigvl.models.two_towers import TwoTowers
  from bigvl.models.vit import ViT
  cfg = dict(cfg)
  name = cfg.pop("name")
  if name == "vit":
    return {"name": name, **_tower(ViT, cfg)}
  if name == "text":
    return {"name": name, **_tower(TextTransformer, cfg)}
  if name != "two_towers":
    raise ConversionError(f"Cannot convert a {name!r} model; conversion knows vit, text and "
                          "two_towers.")
  tt = TwoTowers(**{k: v for k, v in cfg.items() if k not in ("image", "text")})
  out = {"name": name, "embed_dim": tt.embed_dim, "has_bias": tt.bias_init is not None,
         "image": _tower(ViT, cfg["image"]) if cfg.get("image") is not None else None,
         "text": _tower(TextTransformer, cfg["text"]) if cfg.get("text") is not None else None}
  if tt.embed_dim:
    out.update(image_proj_bias=tt.image_proj_bias, text_proj_bias=tt.text_proj_bias)
  return out


def first_difference(a: Mapping, b: Mapping, prefix: str = "") -> tuple[str, object, object] | None:
  """(dotted key, a's value, b's value) of the first key where two nested dicts differ."""
  for key in list(a) + [k for k in b if k not in a]:
    va, vb = a.get(key), b.get(key)
    if isinstance(va, Mapping) and isinstance(vb, Mapping):
      diff = first_difference(va, vb, f"{prefix}{key}.")
      if diff:
        return diff
    elif va != vb:
      return f"{prefix}{key}", va, vb
  return None
