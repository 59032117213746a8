"""Vision Transformer (Dosovitskiy et al.) with big_vision/CLIP/SigLIP switches."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bigvl import sharding as sh
from bigvl.models import layers, sizes


class ViT(nn.Module):
  """images (b, h, w, c) -> (out, extras).

  `out` is the head's logits when `num_classes` is set, else the pooled features:
  (b, width), or (b, rep_size) with `rep_size`, or (b, n, width) with pool="none".
  extras: `tokens` (b, n, width) after the encoder (n includes the class token),
  `pre_logits` (the pooled features), `logits` with a head.

  Layouts of the references (see bigvl/convert for the exact settings):
    big_vision / SigLIP: pool="map" or "gap", no class token, norm on all tokens.
    CLIP (HF, open_clip): pool="cls", cls_posemb=True, pre_norm=True, patch_bias=False.
    HF ViTModel: pool="cls", cls_posemb=True, rep_size=width (its dense+tanh pooler).
  """
  variant: str | None = None         # "B/16"; explicit fields below override it.
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  patch_size: int | None = None
  posemb: str = "learn"              # learn | sincos2d
  pool: str = "gap"                  # cls | gap | map | none
  cls_posemb: bool = False           # The class token has a learned position too (HF/open_clip):
                                     # pos_embedding then covers 1 + patches positions.
  pre_norm: bool = False             # LayerNorm before the first block (CLIP's ln_pre).
  final_norm: bool = True
  norm_pooled: bool = False          # The final LayerNorm acts on the pooled output only (HF CLIP's
                                     # post_layernorm, open_clip final_ln_after_pool): `tokens` stay
                                     # un-normalised. Same pooled output as norm-all for pool="cls".
  patch_bias: bool = True
  act: str = "gelu"
  ln_eps: float = 1e-6
  dropout: float = 0.0
  rep_size: int | None = None        # Dense + tanh after pooling (ViT paper's pre-logits; HF pooler).
  num_classes: int | None = None     # Linear head on the pooled features.
  head_bias: bool = True
  head_zero_init: bool = True
  attention_impl: str = "xla"
  remat: str = "none"                # none | full | dots_saveable (per block).
  dtype: Any = jnp.float32

  def dims(self) -> dict[str, int]:
    return sizes.resolve(self.variant, width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
                         num_heads=self.num_heads, patch_size=self.patch_size)

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    d = self.dims()
    width, p = d["width"], d["patch_size"]
    if image.shape[1] < p or image.shape[2] < p:
      raise ValueError(f"Image size {image.shape[1:3]} is smaller than the patch size {p}.")
    # Pixels past the last whole patch are dropped, as torch's strided Conv2d does (SigLIP
    # So400m/14 at 384px sees 27x27 patches).
    if self.cls_posemb and (self.pool != "cls" or self.posemb != "learn"):
      raise ValueError(f"ViT.cls_posemb=True needs pool='cls' and posemb='learn' "
                       f"(got pool={self.pool!r}, posemb={self.posemb!r}).")
    x = nn.Conv(width, (p, p), strides=(p, p), padding="VALID", use_bias=self.patch_bias,
                dtype=self.dtype, name="embedding",
                kernel_init=layers.logical(nn.initializers.lecun_normal(),
                                           (None, None, None, sh.EMBED)),
                bias_init=layers.logical(nn.initializers.zeros, (sh.EMBED,)))(
                    image.astype(self.dtype))
    b, h, w, _ = x.shape
    x = x.reshape(b, h * w, width)
    if self.posemb == "learn":
      n_pos = h * w + int(self.cls_posemb)
      pe = self.param("pos_embedding",
                      layers.logical(nn.initializers.normal(width ** -0.5),
                                     (None, sh.LENGTH, sh.EMBED)), (1, n_pos, width))
    elif self.posemb == "sincos2d":
      pe = layers.posemb_sincos_2d(h, w, width)
    else:
      raise ValueError(f"Unknown posemb {self.posemb!r}; valid: learn, sincos2d.")
    if self.pool == "cls":  # Created after pos_embedding: param creation order fixes init values.
      cls = self.param("cls", layers.logical(nn.initializers.zeros, (None, None, sh.EMBED)),
                       (1, 1, width))
      cls = jnp.tile(cls, (b, 1, 1)).astype(x.dtype)
    if self.cls_posemb:
      x = jnp.concatenate([cls, x], axis=1) + pe.astype(x.dtype)
    else:
      x = x + pe.astype(x.dtype)
      if self.pool == "cls":
        x = jnp.concatenate([cls, x], axis=1)
    if self.pre_norm:
      x = layers.layer_norm(self.ln_eps, "pre_norm", self.dtype)(x)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    norm_tokens = self.final_norm and not self.norm_pooled
    x = layers.Encoder(d["depth"], d["num_heads"], d["mlp_dim"], self.act, self.ln_eps,
                       self.dropout, norm_tokens, self.attention_impl, self.dtype,
                       self.remat, name="encoder")(x, train=train)
    extras = {"tokens": x}
    if self.pool == "cls":
      pooled = x[:, 0]
    elif self.pool == "gap":
      pooled = x.mean(axis=1)
    elif self.pool == "map":
      pooled = layers.MAPHead(d["num_heads"], d["mlp_dim"], self.act, self.ln_eps,
                              self.attention_impl, self.dtype, name="map_head")(x)
    elif self.pool == "none":
      pooled = x
    else:
      raise ValueError(f"Unknown pool {self.pool!r}; valid: cls, gap, map, none.")
    if self.final_norm and self.norm_pooled:
      pooled = layers.layer_norm(self.ln_eps, "post_norm", self.dtype)(pooled)
    if self.rep_size:
      pooled = nn.tanh(nn.Dense(self.rep_size, dtype=self.dtype, name="pre_logits",
                                kernel_init=layers.logical(nn.initializers.lecun_normal(),
                                                           (sh.EMBED, None)),
                                bias_init=layers.logical(nn.initializers.zeros, (None,)))(pooled))
    extras["pre_logits"] = pooled
    if self.num_classes:
      init = nn.initializers.zeros if self.head_zero_init else nn.initializers.lecun_normal()
      out = nn.Dense(self.num_classes, use_bias=self.head_bias, dtype=self.dtype, name="head",
                     kernel_init=layers.logical(init, (sh.EMBED, sh.CLASSES)),
                     bias_init=layers.logical(nn.initializers.zeros, (sh.CLASSES,)))(pooled)
      extras["logits"] = out
      return out, extras
    return pooled, extras
