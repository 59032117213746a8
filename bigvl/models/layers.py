"""Building blocks shared by every model: MLP, attention, pre-LN blocks, encoders, MAP head.

Parameters carry logical axis names (bigvl.sharding); nothing here knows a mesh.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigvl import sharding as sh
from bigvl.kernels import sharded as sharded_attention

Dtype = Any


def logical(init: Callable, names: tuple[str | None, ...]) -> Callable:
  return nn.with_logical_partitioning(init, names)


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),  # Exact (erf) GELU.
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": quick_gelu,
    "relu": nn.relu,
}


def get_activation(name: str) -> Callable:
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def layer_norm(eps: float, name: str | None = None, dtype: Dtype = jnp.float32) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=dtype, name=name,
                      scale_init=logical(nn.initializers.ones, (sh.EMBED,)),
                      bias_init=logical(nn.initializers.zeros, (sh.EMBED,)))


class MlpBlock(nn.Module):
  """Dense -> activation -> dropout -> Dense. (..., width) -> (..., width)."""
  mlp_dim: int
  act: str = "gelu"
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    d = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1",
                 kernel_init=logical(nn.initializers.xavier_uniform(), (sh.EMBED, sh.MLP)),
                 bias_init=logical(nn.initializers.normal(1e-6), (sh.MLP,)))(x)
    x = nn.with_logical_constraint(x, (sh.BATCH, sh.LENGTH, sh.MLP))
    x = get_activation(self.act)(x)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    return nn.Dense(d, dtype=self.dtype, name="fc2",
                    kernel_init=logical(nn.initializers.xavier_uniform(), (sh.MLP, sh.EMBED)),
                    bias_init=logical(nn.initializers.normal(1e-6), (sh.EMBED,)))(x)


class Attention(nn.Module):
  """Multi-head attention with separate q/k/v/out projections.

  x: (batch, q_len, width); kv: (batch, kv_len, width) or None for self-attention.
  """
  num_heads: int
  use_bias: bool = True
  impl: str = "xla"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, kv=None, *, mask=None, causal: bool = False):
    kv = x if kv is None else kv
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads {self.num_heads}.")
    head_dim = d // self.num_heads

    q = HeadsDense(self.num_heads, head_dim, self.use_bias, self.dtype, name="query")(x)
    k = HeadsDense(self.num_heads, head_dim, self.use_bias, self.dtype, name="key")(kv)
    v = HeadsDense(self.num_heads, head_dim, self.use_bias, self.dtype, name="value")(kv)
    # Per shard of the batch (and heads): a kernel never sees the global batch.
    out = sharded_attention.attention(q, k, v, mask=mask, causal=causal, impl=self.impl)
    out = nn.with_logical_constraint(out, (sh.BATCH, sh.LENGTH, sh.HEADS, sh.KV))
    return HeadsOut(d, self.use_bias, self.dtype, name="out")(out)


class HeadsDense(nn.Module):
  """(..., width) -> (..., heads, head_dim); kernel (width, heads, head_dim)."""
  num_heads: int
  head_dim: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    # Params are created in their final 3-D shape: flax's DenseGeneral creates them flat
    # and reshapes, which breaks 3-D logical annotations.
    kernel = self.param("kernel", logical(nn.initializers.xavier_uniform(in_axis=0,
                                                                         out_axis=(1, 2)),
                                          (sh.EMBED, sh.HEADS, sh.KV)),
                        (x.shape[-1], self.num_heads, self.head_dim))
    y = jnp.einsum("...d,dhk->...hk", x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", logical(nn.initializers.zeros, (sh.HEADS, sh.KV)),
                        (self.num_heads, self.head_dim))
      y = y + bias.astype(self.dtype)
    return y


class HeadsOut(nn.Module):
  """(..., heads, head_dim) -> (..., features); kernel (heads, head_dim, features)."""
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", logical(nn.initializers.xavier_uniform(in_axis=(0, 1),
                                                                         out_axis=2),
                                          (sh.HEADS, sh.KV, sh.EMBED)),
                        (x.shape[-2], x.shape[-1], self.features))
    y = jnp.einsum("...hk,hkd->...d", x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", logical(nn.initializers.zeros, (sh.EMBED,)), (self.features,))
      y = y + bias.astype(self.dtype)
    return y


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + Attn(LN(x)); x + MLP(LN(x))."""
  num_heads: int
  mlp_dim: int
  act: str = "gelu"
  ln_eps: float = 1e-6
  dropout: float = 0.0
  attention_impl: str = "xla"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, causal: bool = False, train: bool = False):
    # Positional (not keyword-only) so that nn.remat can mark causal/train static.
    x = nn.with_logical_constraint(x, (sh.BATCH, sh.LENGTH, sh.EMBED))
    y = layer_norm(self.ln_eps, "ln1", self.dtype)(x)
    y = Attention(self.num_heads, impl=self.attention_impl, dtype=self.dtype, name="attn")(
        y, mask=mask, causal=causal)
    x = x + nn.Dropout(self.dropout)(y, deterministic=not train)
    y = layer_norm(self.ln_eps, "ln2", self.dtype)(x)
    y = MlpBlock(self.mlp_dim, self.act, self.dropout, self.dtype, name="mlp")(y, train=train)
    return x + nn.Dropout(self.dropout)(y, deterministic=not train)


REMAT_POLICIES = {
    "full": None,  # Save only the block's input; recompute everything else.
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # Keep matmul outputs.
}


def remat_block(policy: str):
  """EncoderBlock, rematerialised under `policy` (none | full | dots_saveable)."""
  if policy == "none":
    return EncoderBlock
  if policy not in REMAT_POLICIES:
    raise ValueError(f"Unknown remat policy {policy!r}; valid: none, "
                     f"{', '.join(REMAT_POLICIES)}.")
  # Arguments: self=0, x=1, mask=2, causal=3, train=4.
  return nn.remat(EncoderBlock, policy=REMAT_POLICIES[policy], static_argnums=(3, 4))


LAYERS = "layers"     # Logical name of the stacked-layers axis of scanned params (never split).
SCANNED = "blocks"    # Scanned encoders keep their stacked blocks under encoder/blocks/block.


class ScanStep(nn.Module):
  """One EncoderBlock as an nn.scan body: (x, mask) -> (x, None).

  `block_args`: EncoderBlock's (num_heads, mlp_dim, act, ln_eps, dropout, attention_impl,
  dtype); causal and train are fields, not arguments, so they stay static under the scan.
  """
  block_args: tuple
  remat: str = "none"
  causal: bool = False
  train: bool = False

  @nn.compact
  def __call__(self, x, mask):
    x = remat_block(self.remat)(*self.block_args, name="block")(x, mask, self.causal,
                                                                self.train)
    return x, None


class Encoder(nn.Module):
  """`depth` EncoderBlocks and an optional final LayerNorm. (b, l, d) -> (b, l, d)."""
  depth: int
  num_heads: int
  mlp_dim: int
  act: str = "gelu"
  ln_eps: float = 1e-6
  dropout: float = 0.0
  final_norm: bool = True
  attention_impl: str = "xla"
  dtype: Dtype = jnp.float32
  remat: str = "none"           # none | full | dots_saveable: what each block keeps for backward.

  scan: bool = False             # One nn.scan over the blocks (params stacked: see layer_scan).

  @nn.compact
  def __call__(self, x, *, mask=None, causal: bool = False, train: bool = False):
    args = (self.num_heads, self.mlp_dim, self.act, self.ln_eps, self.dropout,
            self.attention_impl, self.dtype)
    if self.scan:
      # The loop body is traced and compiled once, whatever the depth; under FSDP each
      # iteration gathers only its own layer's weights, and its gradients are reduced to
      # their shards inside the loop, so no full-size gathered copy lives across layers.
      blocks = nn.scan(ScanStep, variable_axes={"params": 0},
                       split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                       length=self.depth, metadata_params={nn.PARTITION_NAME: LAYERS})
      x, _ = blocks(args, self.remat, causal, train, name=SCANNED)(x, mask)
    else:
      block = remat_block(self.remat)
      for i in range(self.depth):
        x = block(*args, name=f"block{i}")(x, mask, causal, train)
    if self.final_norm:
      x = layer_norm(self.ln_eps, "encoder_norm", self.dtype)(x)
    return x


class MAPHead(nn.Module):
  """Multihead attention pooling: a learned probe attends over tokens. (b, l, d) -> (b, d)."""
  num_heads: int
  mlp_dim: int
  act: str = "gelu"
  ln_eps: float = 1e-6
  attention_impl: str = "xla"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, mask=None):
    d = x.shape[-1]
    probe = self.param("probe", logical(nn.initializers.xavier_uniform(), (None, None, sh.EMBED)),
                       (1, 1, d))
    probe = jnp.tile(probe, (x.shape[0], 1, 1)).astype(x.dtype)
    x = Attention(self.num_heads, impl=self.attention_impl, dtype=self.dtype, name="attn")(
        probe, x, mask=mask)
    y = layer_norm(self.ln_eps, "ln", self.dtype)(x)
    x = x + MlpBlock(self.mlp_dim, self.act, dtype=self.dtype, name="mlp")(y)
    return x[:, 0]


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding (MoCo v3 / big_vision layout). Returns (1, h*w, width)."""
  if width % 4:
    raise ValueError(f"sincos2d position embedding needs width % 4 == 0, got {width}.")
  y, x = np.mgrid[:h, :w]
  omega = np.arange(width // 4) / (width // 4 - 1 if width > 4 else 1)
  omega = 1. / (temperature ** omega)
  y = np.einsum("m,d->md", y.flatten(), omega)
  x = np.einsum("m,d->md", x.flatten(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype(np.float32)
