"""Rotary position embedding (RoPE, Su et al. 2021), as LLaMA and GPT-NeoX apply it.

Each head's features are split in two halves (x1, x2); pair j = (x1[j], x2[j]) is rotated
by the angle position * base^(-2j / head_dim). Applied to queries and keys, it makes their
dot product depend on the positions only through their difference, so a head that attends
"one token back" is the same few weights at every position: a causal LM with it learns to
copy from an earlier context (an induction head) at positions it has seldom seen, which
learned absolute positions do not (docs/flamingo.md, fast binding).
"""

from __future__ import annotations

import jax.numpy as jnp


def rotate(x, positions, base: float = 10_000.0):
  """x (b, l, heads, head_dim), positions (l,) or (b, l) int -> x rotated, same shape/dtype.

  head_dim must be even. Computed in float32 and cast back.
  """
  d = x.shape[-1]
  if d % 2:
    raise ValueError(f"Rotary position embedding needs an even head dimension, got {d}.")
  inv_freq = base ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2.0 / d)   # (d/2,)
  pos = jnp.asarray(positions, jnp.float32)
  angles = pos[..., None] * inv_freq                                          # (..., l, d/2)
  angles = angles[None] if angles.ndim == 2 else angles                       # (b|1, l, d/2)
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., : d // 2], xf[..., d // 2:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)
