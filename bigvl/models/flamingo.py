"""Flamingo (Alayrac et al. 2022): a causal LM reading interleaved images through gated
cross-attention layers to a Perceiver-resampled vision encoder.

Text holds one `image_token_id` marker per image; image j (0-based) is the j-th marker of
the row. Each text token cross-attends to the image(s) `media_attend_mask` allows it (by
default only the most recent image at or before it, as in the paper); earlier text reaches
earlier images only through the LM's own self-attention.

The LM is a plain `CausalLM` under `lm/` (same param tree as a standalone one, so an LM
checkpoint loads there unchanged); the gated layers start with tanh(0) = 0 gates, so at
init the model's logits are exactly the LM's. The paper trains only the resampler and the
gated layers; the `flamingo` objective freezes `vision/` and `lm/` by default (its
`freeze` option; bigvl/objectives/interleaved.py).

Evaluators that score many texts against the same images call `encode_media` once and then
`lm_logits(media, tokens)` per text (through `model.apply(..., method=...)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bigvl import sharding as sh
from bigvl.models import layers
from bigvl.models.lm import CausalLM
from bigvl.models.vit import ViT
from bigvl.registry import MODELS, check_kwargs

MEDIA_MODES = ("last", "all_previous")


def media_attend_mask(tokens, image_token_id: int, num_media: int, mode: str = "last"):
  """(b, l) ids -> (b, l, num_media) bool: True where token t may cross-attend to image j.

  With c_t = number of `image_token_id` markers at positions <= t, "last" lets token t see
  image c_t - 1 only (the paper's choice), "all_previous" images 0 .. c_t - 1. Tokens before
  the first marker see nothing; images without a marker (j >= count) are never seen.
  """
  if mode not in MEDIA_MODES:
    raise ValueError(f"Unknown media_mode {mode!r}; valid: {', '.join(MEDIA_MODES)}.")
  count = jnp.cumsum(tokens == image_token_id, axis=1)[..., None]  # (b, l, 1)
  j = jnp.arange(num_media)
  return j == count - 1 if mode == "last" else j < count


class PerceiverResampler(nn.Module):
  """Media tokens (b, m, T, v, d) -> (b, m, num_latents, d).

  m images (or videos) of T frames with v vision tokens each. A learned time embedding is
  added per frame, the T*v tokens are flattened, and `num_latents` learned latents read
  them through `depth` layers of
    latents += Attn(q=LN(latents), kv=concat(LN(media), LN(latents)));
    latents += MLP(LN(latents)),
  then a final LayerNorm. The output size does not depend on T or v, which is what lets the
  LM attend to any image resolution or clip length at a fixed cost.
  """
  depth: int = 6
  num_heads: int = 8
  mlp_dim: int | None = None    # None: 4 * d.
  num_latents: int = 64
  max_frames: int = 1           # Learned time embeddings; clips may have at most this many frames.
  ln_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train  # No dropout; kept for a uniform call signature.
    b, m, t, v, d = x.shape
    if t > self.max_frames:
      raise ValueError(f"Media has {t} frames but the resampler has max_frames="
                       f"{self.max_frames}; raise config.model.resampler.max_frames.")
    time = self.param("time_embedding", layers.logical(nn.initializers.normal(0.02),
                                                       (None, None, sh.EMBED)),
                      (self.max_frames, 1, d))
    # Images are independent: fold m into the batch.
    x = (x.astype(self.dtype) + time[:t].astype(self.dtype)).reshape(b * m, t * v, d)
    latents = self.param("latents", layers.logical(nn.initializers.normal(0.02),
                                                   (None, sh.EMBED)), (self.num_latents, d))
    lat = jnp.broadcast_to(latents.astype(self.dtype), (b * m, self.num_latents, d))
    for i in range(self.depth):
      media = layers.layer_norm(self.ln_eps, f"ln_media{i}", self.dtype)(x)
      q = layers.layer_norm(self.ln_eps, f"ln_latents{i}", self.dtype)(lat)
      # Latents attend to themselves too (kv includes them), as in the paper.
      lat = lat + layers.Attention(self.num_heads, dtype=self.dtype, name=f"attn{i}")(
          q, jnp.concatenate([media, q], axis=1))
      y = layers.layer_norm(self.ln_eps, f"ln_mlp{i}", self.dtype)(lat)
      lat = lat + layers.MlpBlock(self.mlp_dim or 4 * d, dtype=self.dtype, name=f"mlp{i}")(y)
    lat = layers.layer_norm(self.ln_eps, "final_norm", self.dtype)(lat)
    return lat.reshape(b, m, self.num_latents, d)


class GatedCrossAttentionDense(nn.Module):
  """x (b, l, D), media (b, m, n, d_vis), mask (b, l, m) bool -> (b, l, D).

    x = x + tanh(alpha_attn) * CrossAttn(LN(x), tokens of the images mask allows)
    x = x + tanh(alpha_ff) * MLP(LN(x))

  The alphas are scalars initialised to `gate_init` (0, the paper's: the layer starts as
  the identity; a nonzero start lets images reach a frozen LM's attention from step 0,
  which a task that needs two images to match, like fast binding, needs). A token
  whose mask row is all False gets exactly zero cross-attention output (the attention
  kernel would otherwise give it the average of all image values).
  """
  num_heads: int = 8
  mlp_dim: int | None = None    # None: 4 * D.
  ln_eps: float = 1e-6
  gate_init: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, media, mask, *, train: bool = False):
    del train
    b, m, n, dv = media.shape
    # (b, l, m) image mask -> (b, 1, l, m*n) key mask, shared by the heads.
    kv_mask = jnp.repeat(mask, n, axis=-1)[:, None]
    y = layers.layer_norm(self.ln_eps, "ln_attn", self.dtype)(x)
    y = layers.Attention(self.num_heads, dtype=self.dtype, name="attn")(
        y, media.reshape(b, m * n, dv).astype(self.dtype), mask=kv_mask)
    y = y * mask.any(axis=-1, keepdims=True).astype(y.dtype)
    init = nn.initializers.constant(self.gate_init)
    gate = lambda name: jnp.tanh(self.param(name, layers.logical(init, ()), ())).astype(
        self.dtype)
    x = x + gate("alpha_attn") * y
    y = layers.layer_norm(self.ln_eps, "ln_mlp", self.dtype)(x)
    y = layers.MlpBlock(self.mlp_dim or 4 * x.shape[-1], dtype=self.dtype, name="mlp")(y)
    return x + gate("alpha_ff") * y


GATES = ("alpha_attn", "alpha_ff")


def gates_closed(params: dict) -> dict:
  """A copy of a Flamingo's params (plain or boxed, as a train state holds them) with every
  gate of every gated layer set to 0: the model then computes the frozen LM's logits,
  whatever the images (the no-vision control)."""
  def zero(x):
    if isinstance(x, nn.meta.AxisMetadata):
      return x.replace_boxed(jnp.zeros_like(x.unbox()))
    return jnp.zeros_like(x)

  out = dict(params)
  for name, sub in params.items():
    if name.startswith("xattn") and isinstance(sub, Mapping) and GATES[0] in sub:
      out[name] = {**sub, **{g: zero(sub[g]) for g in GATES}}
  return out


@MODELS.register("flamingo")
class Flamingo(nn.Module):
  """(images, tokens (b, l)) -> logits (b, l, vocab) float32; position i predicts token i + 1.

  images: (b, m, h, w, c) -- m images per example -- or (b, m, T, h, w, c) for clips of T
  frames. Submodules: `vision` (ViT, all tokens), `resampler` (PerceiverResampler at the
  ViT's width), `lm` (CausalLM), and `xattn{i}` (GatedCrossAttentionDense) before LM block
  i for every i % cross_every == 0.
  """
  vision: dict | None = None      # ViT options; pool is "none" (all tokens).
  lm: dict | None = None          # CausalLM options (vocab_size None: filled by the train loop).
  resampler: dict | None = None   # PerceiverResampler options.
  xattn: dict | None = None       # GatedCrossAttentionDense options: num_heads, mlp_dim,
                                  # gate_init.
  cross_every: int = 1
  media_mode: str = "last"        # Which images a token sees; see media_attend_mask.
  image_token_id: int | None = None
  dtype: Any = jnp.float32

  def setup(self):
    vis = dict(self.vision or {})
    check_kwargs(ViT, vis, "config.model.vision")
    if vis.get("pool", "none") != "none":
      raise ValueError(f"config.model.vision.pool={vis['pool']!r}: Flamingo resamples all "
                       "the ViT's tokens; leave pool unset (none).")
    vis["pool"] = "none"
    opts = {"lm": dict(self.lm or {}), "resampler": dict(self.resampler or {}),
            "xattn": dict(self.xattn or {})}
    for key, cls in (("lm", CausalLM), ("resampler", PerceiverResampler),
                     ("xattn", GatedCrossAttentionDense)):
      check_kwargs(cls, opts[key], f"config.model.{key}")
    if self.cross_every < 1:
      raise ValueError(f"config.model.cross_every={self.cross_every} must be >= 1.")
    if self.media_mode not in MEDIA_MODES:
      raise ValueError(f"Unknown config.model.media_mode {self.media_mode!r}; valid: "
                       f"{', '.join(MEDIA_MODES)}.")
    # The fields `vision`, `lm`, ... hold the options, so the submodules live under other
    # attributes with their param names given explicitly (lm/ is a standalone CausalLM's tree).
    self.vision_tower = ViT(**vis, dtype=self.dtype, name="vision")
    self.resampler_module = PerceiverResampler(**opts["resampler"], dtype=self.dtype,
                                               name="resampler")
    self.lm_module = CausalLM(**opts["lm"], dtype=self.dtype, name="lm")
    self.xattn_layers = [GatedCrossAttentionDense(**opts["xattn"], dtype=self.dtype,
                                                  name=f"xattn{i}")
                         for i in range(0, self.lm_module.num_blocks, self.cross_every)]

  def encode_media(self, images, train: bool = False):
    """images (b, m, h, w, c) or (b, m, T, h, w, c) -> media (b, m, num_latents, d_vis)."""
    if images.ndim == 5:
      images = images[:, :, None]
    if images.ndim != 6:
      raise ValueError(f"Flamingo images have shape {images.shape}; expected (b, m, h, w, c) "
                       "or (b, m, frames, h, w, c).")
    b, m, t = images.shape[:3]
    # Every frame of every image through the ViT as one batch.
    tokens, _ = self.vision_tower(images.reshape(b * m * t, *images.shape[3:]), train=train)
    return self.resampler_module(tokens.reshape(b, m, t, *tokens.shape[1:]), train=train)

  def lm_logits(self, media, tokens, train: bool = False):
    """media (b, m, n, d_vis) from `encode_media`, tokens (b, l) -> logits (b, l, vocab)."""
    if self.image_token_id is None:
      raise ValueError("Flamingo needs config.model.image_token_id: the token id that marks "
                       "each image's place in the text.")
    mask = media_attend_mask(tokens, self.image_token_id, media.shape[1], self.media_mode)
    x = self.lm_module.embed(tokens, train=train)
    for i in range(self.lm_module.num_blocks):
      if i % self.cross_every == 0:
        x = self.xattn_layers[i // self.cross_every](x, media, mask, train=train)
      x = self.lm_module.block(i, x, train=train)
    return self.lm_module.logits(x)

  def __call__(self, images, tokens, *, train: bool = False):
    return self.lm_logits(self.encode_media(images, train=train), tokens, train=train)
