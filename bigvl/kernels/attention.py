"""Multi-head dot-product attention: one entry point, several implementations.

`impl="xla"` is the pure-JAX reference (softmax in float32); `impl="cudnn"` calls
`jax.nn.dot_product_attention(implementation="cudnn")` (GPU only); `impl="pallas"` runs
the flash-attention kernels of `bigvl.kernels.flash_attention` (Triton on GPU, the Pallas
interpreter on CPU), which take causal masking and a key-padding mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bigvl.kernels import flash_attention

IMPLS = ("xla", "cudnn", "pallas")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None = None,
              causal: bool = False, impl: str = "xla",
              block_sizes: flash_attention.BlockSizes | None = None) -> jax.Array:
  """Softmax attention.

  Args:
    q: (batch, q_len, heads, head_dim).
    k, v: (batch, kv_len, heads, head_dim).
    mask: optional bool, broadcastable to (batch, heads, q_len, kv_len); True = attend.
      A (batch, kv_len) key-padding mask is accepted too.
    causal: query i attends to keys j <= i (aligned at the start).
    impl: "xla" | "cudnn" | "pallas". "pallas" takes only key-padding masks (a bool
      (batch, kv_len) mask, or one broadcastable as (batch|1, 1, 1, kv_len)).
    block_sizes: tile sizes of impl="pallas" (None: its defaults); ignored otherwise.

  Returns:
    (batch, q_len, heads, head_dim) in q's dtype.
  """
  if mask is not None and mask.ndim == 2:
    mask = mask[:, None, None, :]
  if impl == "xla":
    return attention_reference(q, k, v, mask=mask, causal=causal)
  if impl == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                        implementation="cudnn")
  if impl == "pallas":
    return flash_attention.flash_attention(q, k, v, mask=_key_padding(mask, q, k),
                                           causal=causal, block_sizes=block_sizes)
  raise ValueError(f"Unknown attention impl {impl!r}; valid: {IMPLS}.")


def _key_padding(mask, q, k):
  """A 4-D mask that only varies along keys -> (batch, kv_len); anything else is an error."""
  if mask is None:
    return None
  b, lk = q.shape[0], k.shape[1]
  if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2] != 1 or mask.shape[3] != lk \
     or mask.shape[0] not in (1, b):
    raise ValueError(f"attention impl='pallas' takes causal=True and key-padding masks "
                     f"((batch, kv_len) or (batch, 1, 1, kv_len)); got mask {mask.shape} for "
                     f"q {q.shape}, k {k.shape}. Use impl='xla' for general masks.")
  return jnp.broadcast_to(mask[:, 0, 0, :], (b, lk)).astype(bool)


def attention_reference(q, k, v, *, mask=None, causal=False):
  """Plain jnp attention; same signature and semantics as `attention` without `impl`.

  Masked logits are set to finfo(float32).min, so a row whose every key is masked gets
  the uniform average of all values (the Pallas kernel reproduces this).
  """
  if mask is not None and mask.ndim == 2:
    mask = mask[:, None, None, :]
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  big_neg = jnp.finfo(jnp.float32).min
  if causal:
    qi = jnp.arange(q.shape[1])[:, None]
    ki = jnp.arange(k.shape[1])[None, :]
    logits = jnp.where(ki <= qi, logits, big_neg)
  if mask is not None:
    logits = jnp.where(mask, logits, big_neg)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)
