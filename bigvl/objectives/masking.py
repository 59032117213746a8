"""Random patch masking shared by MAE, SimMIM and FLIP."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def num_kept(num_patches: int, ratio: float) -> int:
  """Patches left visible at masking `ratio`: round((1 - ratio) * num_patches), at least 1."""
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"Masking ratio {ratio} must be in [0, 1).")
  k = round((1.0 - ratio) * num_patches)
  if k < 1:
    raise ValueError(f"Masking ratio {ratio} leaves no visible patch of {num_patches}; "
                     "lower it.")
  return k


def random_keep(rng, batch: int, num_patches: int, ratio: float):
  """Per-example uniform random masking.

  Returns:
    keep: (batch, k) int32 indices of the visible patches, k = num_kept(num_patches, ratio).
    mask: (batch, num_patches) bool, True where a patch is masked.
  """
  k = num_kept(num_patches, ratio)
  order = jnp.argsort(jax.random.uniform(rng, (batch, num_patches)), axis=1)
  keep = order[:, :k].astype(jnp.int32)
  mask = jnp.ones((batch, num_patches), bool).at[jnp.arange(batch)[:, None], keep].set(False)
  return keep, mask
