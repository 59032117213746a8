"""Text decoder: causal self-attention (with a KV cache for generation), cross-attention
to image tokens, MLP; shares its attention, MLP and LayerNorm modules with the encoders.

Inputs are the *targets* shifted right with `pad_id` as the start token (as T5 does), so a
caption is predicted token by token from `[pad, t1, ..., t_{l-1}]`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigvl import sharding as sh
from bigvl.kernels import sharded as sharded_attention
from bigvl.models import layers, rotary, sizes


def shift_right(tokens: jnp.ndarray, start_id: int) -> jnp.ndarray:
  """(b, l) targets -> (b, l) decoder inputs: start_id, t1, ..., t_{l-1}."""
  return jnp.concatenate([jnp.full_like(tokens[:, :1], start_id), tokens[:, :-1]], axis=1)


class SelfAttention(nn.Module):
  """Multi-head self-attention whose keys/values can be cached for step-by-step decoding.

  `decode=True` with the cache initialised (by an init call on a full-length input) takes
  one position (b, 1, d), appends its key/value at the cache index and attends to all
  cached positions so far; otherwise it attends over the whole input (causal or not).
  `rope=True` rotates queries and keys by their positions (bigvl.models.rotary).
  """
  num_heads: int
  impl: str = "xla"
  dtype: Any = jnp.float32
  rope: bool = False

  @nn.compact
  def __call__(self, x, *, causal: bool, decode: bool = False):
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads {self.num_heads}.")
    hd = d // self.num_heads
    q = layers.HeadsDense(self.num_heads, hd, True, self.dtype, name="query")(x)
    k = layers.HeadsDense(self.num_heads, hd, True, self.dtype, name="key")(x)
    v = layers.HeadsDense(self.num_heads, hd, True, self.dtype, name="value")(x)
    if self.rope:
      start = 0
      if decode and self.has_variable("cache", "cache_index"):
        start = self.get_variable("cache", "cache_index")
      positions = start + jnp.arange(x.shape[1])
      q, k = rotary.rotate(q, positions), rotary.rotate(k, positions)
    if decode:
      initialised = self.has_variable("cache", "cached_key")
      ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
      cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
      index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
      if initialised:
        if x.shape[1] != 1:
          raise ValueError(f"Cached decoding takes one position at a time, got {x.shape[1]}.")
        i = index.value
        ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, i, 0, 0))
        cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, i, 0, 0))
        index.value = i + 1
        visible = (jnp.arange(ck.value.shape[1]) <= i)[None, None, None, :]
        out = sharded_attention.attention(q, ck.value, cv.value, mask=visible, impl="xla")
        return layers.HeadsOut(d, True, self.dtype, name="out")(out)
    out = sharded_attention.attention(q, k, v, causal=causal, impl=self.impl)
    out = nn.with_logical_constraint(out, (sh.BATCH, sh.LENGTH, sh.HEADS, sh.KV))
    return layers.HeadsOut(d, True, self.dtype, name="out")(out)


class DecoderBlock(nn.Module):
  """Pre-LN: x + SelfAttn(LN(x)); [x + CrossAttn(LN(x), memory)]; x + MLP(LN(x))."""
  num_heads: int
  mlp_dim: int
  cross: bool = True
  act: str = "gelu"
  ln_eps: float = 1e-6
  dropout: float = 0.0
  attention_impl: str = "xla"
  dtype: Any = jnp.float32
  rope: bool = False              # Rotary positions in the self-attention.

  @nn.compact
  def __call__(self, x, memory, causal: bool = True, decode: bool = False,
               train: bool = False):
    # Positional (not keyword-only) so that nn.remat can mark causal/decode/train static.
    drop = lambda y: nn.Dropout(self.dropout)(y, deterministic=not train)
    x = nn.with_logical_constraint(x, (sh.BATCH, sh.LENGTH, sh.EMBED))
    y = layers.layer_norm(self.ln_eps, "ln1", self.dtype)(x)
    x = x + drop(SelfAttention(self.num_heads, self.attention_impl, self.dtype, self.rope,
                               name="attn")(y, causal=causal, decode=decode))
    if self.cross:
      y = layers.layer_norm(self.ln_eps, "ln_cross", self.dtype)(x)
      x = x + drop(layers.Attention(self.num_heads, impl=self.attention_impl, dtype=self.dtype,
                                    name="cross_attn")(y, memory))
    y = layers.layer_norm(self.ln_eps, "ln2", self.dtype)(x)
    return x + drop(layers.MlpBlock(self.mlp_dim, self.act, self.dropout, self.dtype,
                                    name="mlp")(y, train=train))


class TextDecoder(nn.Module):
  """(inputs (b, l) ids, memory (b, m, width) | None) -> (logits (b, l, vocab), extras).

  `depth` blocks, of which the first `unimodal_depth` have no cross-attention (CoCa's
  unimodal text layers; 0 for a plain captioner). With `cls_token`, a learned token is
  appended after the inputs in the unimodal layers; its output, normalised, is
  `extras["cls"]` (b, width), CoCa's text embedding. `parallel=True` replaces every input
  by a learned mask embedding and drops the causal mask (CapPa's parallel prediction).
  `decode=True`: one position per call against the KV cache (see SelfAttention).
  `unimodal_only=True`: only the unimodal layers run (text embedding without an image);
  logits are None.
  """
  vocab_size: int | None = None
  variant: str | None = None
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  max_len: int = 64
  unimodal_depth: int = 0
  cls_token: bool = False
  pad_id: int = 0
  act: str = "gelu"
  ln_eps: float = 1e-6
  dropout: float = 0.0
  attention_impl: str = "xla"
  remat: str = "none"                # none | full | dots_saveable: what each block keeps for
                                     # backward (not applied to cached decoding).
  dtype: Any = jnp.float32

  def dims(self) -> dict[str, int]:
    return sizes.resolve(self.variant, width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
                         num_heads=self.num_heads)

  def _block(self, decode: bool):
    """DecoderBlock, rematerialised under `remat` unless decoding step by step."""
    if self.remat == "none" or decode:
      return DecoderBlock
    if self.remat not in layers.REMAT_POLICIES:
      raise ValueError(f"Unknown config.model.decoder.remat {self.remat!r}; valid: none, "
                       f"{', '.join(layers.REMAT_POLICIES)}.")
    # Arguments: self=0, x=1, memory=2, causal=3, decode=4, train=5.
    return nn.remat(DecoderBlock, policy=layers.REMAT_POLICIES[self.remat],
                    static_argnums=(3, 4, 5))

  @nn.compact
  def __call__(self, inputs, memory, *, decode: bool = False, parallel: bool = False,
               unimodal_only: bool = False, train: bool = False):
    if self.vocab_size is None:
      raise ValueError("TextDecoder.vocab_size is not set (config.model.decoder.vocab_size).")
    d = self.dims()
    width = d["width"]
    if not 0 <= self.unimodal_depth <= d["depth"]:
      raise ValueError(f"unimodal_depth={self.unimodal_depth} must be in [0, depth={d['depth']}].")
    b, l = inputs.shape
    if l > self.max_len:
      raise ValueError(f"Decoder input length {l} exceeds max_len {self.max_len}; raise "
                       "config.model.decoder.max_len or shorten config.data.text_len.")
    pe = self.param("pos_embedding",
                    layers.logical(nn.initializers.normal(0.01), (None, sh.LENGTH, sh.EMBED)),
                    (1, self.max_len, width)).astype(self.dtype)
    # Created whether or not this call is parallel, so that one init serves both modes.
    mask_emb = self.param("mask_embedding",
                          layers.logical(nn.initializers.normal(0.02), (None, None, sh.EMBED)),
                          (1, 1, width))
    if parallel:
      x = jnp.broadcast_to(mask_emb.astype(self.dtype), (b, l, width))
    else:
      x = nn.Embed(self.vocab_size, width, name="token_embedding", dtype=self.dtype,
                   embedding_init=layers.logical(nn.initializers.normal(0.02),
                                                 (sh.VOCAB, sh.EMBED)))(inputs)
    if decode and self.has_variable("cache", "position"):
      pos = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
      x = x + jax.lax.dynamic_slice_in_dim(pe, pos.value, 1, axis=1)
      pos.value = pos.value + 1
    else:
      if decode:  # The init call that creates the cache: the position starts at 0.
        self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
      x = x + pe[:, :l]
    x = nn.Dropout(self.dropout)(x, deterministic=not train)

    use_cls = self.cls_token and not decode
    if use_cls:
      cls = self.param("cls", layers.logical(nn.initializers.normal(0.02), (None, None, sh.EMBED)),
                       (1, 1, width))
      x = jnp.concatenate([x, jnp.broadcast_to(cls.astype(x.dtype), (b, 1, width))], axis=1)
    extras = {}
    block = self._block(decode)
    for i in range(d["depth"]):
      cross = i >= self.unimodal_depth
      if cross and use_cls and i == self.unimodal_depth:
        x, cls_out = x[:, :-1], x[:, -1]
        extras["cls"] = layers.layer_norm(self.ln_eps, "cls_norm", self.dtype)(cls_out)
      if cross and unimodal_only:
        break
      if cross and memory is None:
        raise ValueError("TextDecoder: cross-attention layers need image tokens (memory).")
      x = block(d["num_heads"], d["mlp_dim"], cross, self.act, self.ln_eps, self.dropout,
                self.attention_impl, self.dtype, name=f"block{i}")(
                    x, memory, not parallel, decode, train)
    if use_cls and "cls" not in extras:  # Every layer unimodal.
      x, cls_out = x[:, :-1], x[:, -1]
      extras["cls"] = layers.layer_norm(self.ln_eps, "cls_norm", self.dtype)(cls_out)
    if unimodal_only:
      return None, extras
    x = layers.layer_norm(self.ln_eps, "decoder_norm", self.dtype)(x)
    logits = nn.Dense(self.vocab_size, dtype=self.dtype, name="head",
                      kernel_init=layers.logical(nn.initializers.lecun_normal(),
                                                 (sh.EMBED, sh.VOCAB)),
                      bias_init=layers.logical(nn.initializers.zeros, (sh.VOCAB,)))(x)
    return logits.astype(jnp.float32), extras
