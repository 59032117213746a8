"""Text transformer: token + position embedding, pre-LN blocks, pooling, optional head."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bigvl import sharding as sh
from bigvl.models import layers, sizes
from bigvl.registry import MODELS


@MODELS.register("text")
class TextTransformer(nn.Module):
  """tokens (b, l) int -> (out, extras).

  pool: `last` (SigLIP: the last position), `eos` (CLIP: first position holding `eos_id`),
  `argmax` (the position of the highest token id: open_clip's default, and HF CLIP configs with
  eos_token_id == 2, since CLIP's EOS is the last id of its vocabulary), `first`, `gap` (mean
  over non-pad tokens), `map`, `none` (all tokens).
  extras: `tokens` (b, l, width) after the encoder, `pre_logits`.
  """
  vocab_size: int | None = None
  variant: str | None = None
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  max_len: int = 64             # Positions of the learned position embedding.
  causal: bool = False          # CLIP: causal mask. SigLIP: none.
  mask_pad: bool = False        # Keys equal to pad_id are masked out.
  pad_id: int = 0
  eos_id: int = 2
  pool: str = "last"
  act: str = "gelu"
  ln_eps: float = 1e-6
  dropout: float = 0.0
  num_classes: int | None = None
  head_bias: bool = True
  attention_impl: str = "xla"
  remat: str = "none"                # none | full | dots_saveable (per block).
  scan_layers: bool = False          # nn.scan over the blocks (stacked params; models/layer_scan.py).
  dtype: Any = jnp.float32

  def dims(self) -> dict[str, int]:
    return sizes.resolve(self.variant, width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
                         num_heads=self.num_heads)

  @nn.compact
  def __call__(self, tokens, *, train: bool = False):
    if self.vocab_size is None:
      raise ValueError("TextTransformer.vocab_size is not set (config.model.text.vocab_size).")
    d = self.dims()
    width = d["width"]
    b, l = tokens.shape
    if l > self.max_len:
      raise ValueError(f"Text length {l} exceeds max_len {self.max_len}; raise "
                       "config.model...max_len or shorten config.data.text_len.")
    x = nn.Embed(self.vocab_size, width, name="token_embedding",
                 embedding_init=layers.logical(nn.initializers.normal(0.02), (sh.VOCAB, sh.EMBED)),
                 dtype=self.dtype)(tokens)
    pe = self.param("pos_embedding",
                    layers.logical(nn.initializers.normal(0.01), (None, sh.LENGTH, sh.EMBED)),
                    (1, self.max_len, width))
    x = x + pe[:, :l].astype(x.dtype)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    mask = (tokens != self.pad_id) if self.mask_pad else None
    x = layers.Encoder(d["depth"], d["num_heads"], d["mlp_dim"], self.act, self.ln_eps,
                       self.dropout, True, self.attention_impl, self.dtype, self.remat,
                       scan=self.scan_layers, name="encoder")(
                           x, mask=mask, causal=self.causal, train=train)
    extras = {"tokens": x}
    if self.pool == "last":
      pooled = x[:, -1]
    elif self.pool == "first":
      pooled = x[:, 0]
    elif self.pool == "eos":
      # First EOS; a sequence without one (truncated) pools its last position.
      is_eos = tokens == self.eos_id
      idx = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1), l - 1)
      pooled = x[jnp.arange(b), idx]
    elif self.pool == "argmax":
      pooled = x[jnp.arange(b), jnp.argmax(tokens, axis=1)]
    elif self.pool == "gap":
      keep = (tokens != self.pad_id)[..., None].astype(x.dtype)
      pooled = (x * keep).sum(1) / jnp.maximum(keep.sum(1), 1)
    elif self.pool == "gap_all":  # Pads count: what a big_vision tower trained with "gap" saw.
      pooled = x.mean(axis=1)
    elif self.pool == "max_all":
      pooled = x.max(axis=1)
    elif self.pool == "map":
      pooled = layers.MAPHead(d["num_heads"], d["mlp_dim"], self.act, self.ln_eps,
                              self.attention_impl, self.dtype, name="map_head")(
                                  x, mask=(tokens != self.pad_id) if self.mask_pad else None)
    elif self.pool == "none":
      pooled = x
    else:
      raise ValueError(f"Unknown pool {self.pool!r}; valid: last, first, eos, argmax, gap, "
                       "gap_all, max_all, map, none.")
    extras["pre_logits"] = pooled
    if self.num_classes:
      out = nn.Dense(self.num_classes, use_bias=self.head_bias, dtype=self.dtype, name="head",
                     kernel_init=layers.logical(nn.initializers.lecun_normal(),
                                                (sh.EMBED, sh.CLASSES)),
                     bias_init=layers.logical(nn.initializers.zeros, (sh.CLASSES,)))(pooled)
      return out, extras
    return pooled, extras
