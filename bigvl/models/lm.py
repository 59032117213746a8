"""Decoder-only language model: token + position embedding, causal pre-LN blocks, LM head.

The blocks are the text decoder's (`DecoderBlock` without cross-attention), so the same
KV-cached decoding works. The model is built from methods that a wrapper can call one at
a time -- Flamingo runs `embed`, then each `block(i, ...)` with its own gated
cross-attention layers in between, then `logits` -- so an LM's params load into the
wrapper's `lm/` subtree unchanged.

GPT-2 is `act="gelu_tanh", ln_eps=1e-5, tie_embeddings=True` (see bigvl/convert/hf_gpt2.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigvl import sharding as sh
from bigvl.models import layers, sizes
from bigvl.models.decoder import DecoderBlock
from bigvl.registry import MODELS


class PositionEmbedding(nn.Module):
  """Learned absolute positions; under `decode` a cached counter gives the next ones."""
  max_len: int
  width: int

  @nn.compact
  def __call__(self, x, *, decode: bool = False):
    l = x.shape[1]
    if l > self.max_len:
      raise ValueError(f"LM input length {l} exceeds max_len {self.max_len}; raise "
                       "config.model...max_len or shorten config.data.text_len.")
    pe = self.param("embedding",
                    layers.logical(nn.initializers.normal(0.01), (None, sh.LENGTH, sh.EMBED)),
                    (1, self.max_len, self.width)).astype(x.dtype)
    if decode and self.has_variable("cache", "position"):
      pos = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
      out = x + jax.lax.dynamic_slice_in_dim(pe, pos.value, l, axis=1)
      pos.value = pos.value + l
      return out
    if decode:  # The init call that creates the cache: positions start at 0.
      self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
    return x + pe[:, :l]


POSITIONS = ("learned", "rope")


@MODELS.register("lm")
class CausalLM(nn.Module):
  """tokens (b, l) int -> logits (b, l, vocab) float32; position i predicts token i + 1.

  `decode=True`: one position per call against the KV cache (initialise the cache with an
  init call on a full-length input, as `bigvl.decoding` does).
  """
  vocab_size: int | None = None
  variant: str | None = None
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  max_len: int = 64               # Positions of the learned position embedding.
  # "learned": absolute positions added to the tokens (GPT-2); "rope": rotary positions in
  # every self-attention (LLaMA), no embedding, no length limit.
  position: str = "learned"
  act: str = "gelu"
  ln_eps: float = 1e-6
  tie_embeddings: bool = False    # Logits = final features @ token embedding^T (GPT-2).
  head_bias: bool = True          # Untied head only.
  dropout: float = 0.0
  attention_impl: str = "xla"
  dtype: Any = jnp.float32

  def dims(self) -> dict[str, int]:
    return sizes.resolve(self.variant, width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
                         num_heads=self.num_heads)

  @property
  def num_blocks(self) -> int:
    return self.dims()["depth"]

  def setup(self):
    if self.vocab_size is None:
      raise ValueError("CausalLM.vocab_size is not set (config.model.vocab_size, or "
                       "config.model.lm.vocab_size inside a Flamingo model).")
    d = self.dims()
    self.token_embedding = nn.Embed(
        self.vocab_size, d["width"], dtype=self.dtype,
        embedding_init=layers.logical(nn.initializers.normal(0.02), (sh.VOCAB, sh.EMBED)))
    if self.position not in POSITIONS:
      raise ValueError(f"CausalLM.position={self.position!r}; valid: {', '.join(POSITIONS)}.")
    rope = self.position == "rope"
    if not rope:
      self.position_embedding = PositionEmbedding(self.max_len, d["width"], name="position")
    self.blocks = [DecoderBlock(d["num_heads"], d["mlp_dim"], False, self.act, self.ln_eps,
                                self.dropout, self.attention_impl, self.dtype, rope,
                                name=f"block{i}")
                   for i in range(d["depth"])]
    self.embed_dropout = nn.Dropout(self.dropout)
    self.final_norm = layers.layer_norm(self.ln_eps, "final_norm", self.dtype)
    if not self.tie_embeddings:
      self.head = nn.Dense(self.vocab_size, use_bias=self.head_bias, dtype=self.dtype,
                           name="head",
                           kernel_init=layers.logical(nn.initializers.lecun_normal(),
                                                      (sh.EMBED, sh.VOCAB)),
                           bias_init=layers.logical(nn.initializers.zeros, (sh.VOCAB,)))

  def embed(self, tokens, *, decode: bool = False, train: bool = False):
    """(b, l) ids -> (b, l, width): token + position embedding (dropout in training)."""
    x = self.token_embedding(tokens)
    if self.position == "learned":
      x = self.position_embedding(x, decode=decode)
    return self.embed_dropout(x, deterministic=not train)

  def block(self, i: int, x, *, decode: bool = False, train: bool = False):
    """Block i: (b, l, width) -> (b, l, width), causal."""
    return self.blocks[i](x, None, causal=True, decode=decode, train=train)

  def logits(self, x):
    """(b, l, width) after the last block -> (b, l, vocab) float32."""
    x = self.final_norm(x)
    if self.tie_embeddings:
      return self.token_embedding.attend(x).astype(jnp.float32)
    return self.head(x).astype(jnp.float32)

  def __call__(self, tokens, *, decode: bool = False, train: bool = False):
    x = self.embed(tokens, decode=decode, train=train)
    for i in range(len(self.blocks)):
      x = self.block(i, x, decode=decode, train=train)
    return self.logits(x)
