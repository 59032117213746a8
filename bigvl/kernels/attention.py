"""Multi-head dot-product attention: one entry point, several implementations.

`impl="xla"` is the pure-JAX reference (softmax in float32); `impl="cudnn"` calls
`jax.nn.dot_product_attention(implementation="cudnn")` (GPU only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLS = ("xla", "cudnn")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None = None,
              causal: bool = False, impl: str = "xla") -> jax.Array:
  """Softmax attention.

  Args:
    q: (batch, q_len, heads, head_dim).
    k, v: (batch, kv_len, heads, head_dim).
    mask: optional bool, broadcastable to (batch, heads, q_len, kv_len); True = attend.
      A (batch, kv_len) key-padding mask is accepted too.
    causal: query i attends to keys j <= i (aligned at the start).
    impl: "xla" | "cudnn".

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
  raise ValueError(f"Unknown attention impl {impl!r}; valid: {IMPLS}.")


def attention_reference(q, k, v, *, mask=None, causal=False):
  """Plain jnp attention; same signature as `attention` without `impl`."""
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
